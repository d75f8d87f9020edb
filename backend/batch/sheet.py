"""The contact sheet: every item's turntable in one picture, one row per prompt, labelled with
method, seed and score (ground-truth IoU on the shapes prior, the prior's loss otherwise). With
--keep-best the kept items come first in their row and are marked with a *."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.results import TURNTABLE

from ..pictures import grid, save_png

TILE = (256, 128)      # a turntable is 4 x 2 views; shrunk or grown to this size
MAX_COLUMNS = 8
LABEL_CHARS = 40       # what fits in a tile's label strip with PIL's default font


def label(record: dict[str, Any]) -> str:
    metrics = record.get("metrics") or {}
    score = (f" IoU {metrics['volume_iou']:.2f}" if "volume_iou" in metrics
             else f" loss {metrics['prior_loss']:.3f}" if "prior_loss" in metrics else "")
    state = "" if record["state"] == "done" else f" {record['state'].upper()}"
    tail = f" {record['method']} s{record['seed']}{score}{state}{' *' if record.get('kept') else ''}"
    room = max(8, LABEL_CHARS - len(tail))
    prompt = record["prompt"] if len(record["prompt"]) <= room else record["prompt"][:room - 1] + "~"
    return prompt + tail


def tile(path: Path | None) -> np.ndarray:
    if path is None or not path.exists():
        return np.full((TILE[1], TILE[0], 3), 220, np.uint8)  # grey: not finished
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize(TILE, Image.BILINEAR))


def order(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows by prompt (spec order); within a row kept/best-ranked first, then method and seed."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        rows.setdefault(record["prompt"], []).append(record)
    rank = lambda r: (r.get("rank") is None, r.get("rank") or 0, r["method"], r["seed"])  # noqa: E731
    return [sorted(row, key=rank) for row in rows.values()]


def write_contact_sheet(out: Path, records: list[dict[str, Any]], name: str = "contact_sheet.png") -> Path | None:
    rows = order([r for r in records if r.get("id")])
    if not rows:
        return None
    columns = min(MAX_COLUMNS, max(len(row) for row in rows))
    images, labels = [], []
    for row in rows:
        padded = row + [None] * (-len(row) % columns)  # each prompt starts a new row
        for record in padded:
            paths = (record or {}).get("paths", {})
            images.append(tile(out / paths[TURNTABLE] if TURNTABLE in paths else None))
            labels.append(label(record) if record else "")
    return save_png(grid(images, labels, columns=columns), Path(out) / name)
