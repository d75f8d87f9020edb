"""--keep-best K: the seed lottery's winners, the K best finished items per prompt.

Better means a higher ground-truth volume IoU on the shapes prior (report.json's ground_truth), and a
lower prior denoising loss (score.py) where there is no ground truth. Items are grouped by prompt
and prior (losses of two different models are not comparable). "Kept" marks items in batch.json
(`kept`, `rank`) and puts them first on the contact sheet; nothing is deleted.
"""
from __future__ import annotations

from typing import Any


def quality(record: dict[str, Any]) -> float | None:
    """Higher is better; None when the item has no score (not finished, or an old run without one)."""
    metrics = record.get("metrics") or {}
    if record.get("state") != "done":
        return None
    if "volume_iou" in metrics:
        return float(metrics["volume_iou"])
    if "prior_loss" in metrics:
        return -float(metrics["prior_loss"])
    return None


def mark_best(records: list[dict[str, Any]], keep: int) -> None:
    """Set `rank` (1 = best in its prompt's group) and `kept` (rank <= keep) on every item."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["prompt"], record["prior"]), []).append(record)
    for group in groups.values():
        scored = sorted((r for r in group if quality(r) is not None), key=quality, reverse=True)
        for record in group:
            record["rank"], record["kept"] = None, False
        for rank, record in enumerate(scored, 1):
            record["rank"], record["kept"] = rank, rank <= keep
