"""DIR/batch.json: every item of a batch with its settings, state, timings, paths and metrics.

Written atomically (backend/fileio.py) whenever an item changes state and every few seconds while
items train, so a reader (a person, a script, the test that kills a worker) always sees a whole file.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared.version import __version__
from shared.results import CHECKPOINT, MESH, MTL, OBJ, REPORT, TEXTURE, TURNTABLE

from ..fileio import write_atomic
from .spec import Invalid, Item
from .item_runner import read_status

INDEX_FILE = "batch.json"
# What a single generate writes, in the order a person wants them.
OUTPUT_FILES = (REPORT, TURNTABLE, MESH, OBJ, MTL, TEXTURE, CHECKPOINT)
STATES = ("pending", "running", "done", "failed", "invalid")
# What an item's batch_item.json (item_runner.py) adds to its batch.json entry.
STATUS_KEYS = ("attempt", "worker", "resumed_from_step", "prior_load_s", "prior_reused", "train_s", "wall_s",
               "steps_done", "metrics", "error", "started", "finished", "export_error")


def iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


class BatchIndex:
    def __init__(self, out: Path, items: list[Item], invalid: list[Invalid], meta: dict[str, Any]):
        self.out = Path(out)
        self.meta = meta
        self.started = time.time()
        self.items: dict[str, dict[str, Any]] = {}
        for item in items:
            config = item.config
            self.items[item.id] = {"id": item.id, "row": item.row, "prompt": config.prompt, "method": config.method,
                                   "seed": config.seed, "prior": config.prior, "state": "pending",
                                   "settings": config.to_dict()}
            self._merge_files(item.id)
        self.invalid = [{"id": None, "row": bad.row, "state": "invalid", "error": bad.error, "field": bad.field,
                         "settings": bad.values} for bad in invalid]

    def _merge_files(self, item_id: str) -> None:
        """State as the item's folder tells it: done when generate's report.json is there (finished
        by an earlier run, or resumed alone), resumable when a checkpoint is."""
        record, folder = self.items[item_id], self.out / item_id
        status = read_status(folder)
        for key in STATUS_KEYS:  # the latest attempt's, nothing left over from an earlier one
            record.pop(key, None)
            if key in status:
                record[key] = status[key]
        if (folder / REPORT).exists():
            record["state"] = "done"
            record.pop("error", None)
            if "ground_truth" in (report := json.loads((folder / REPORT).read_text())):
                record["metrics"] = {**record.get("metrics", {}), **report["ground_truth"]}
        elif status.get("state") == "failed":
            record["state"] = "failed"
        record["checkpoint"] = (folder / CHECKPOINT).exists()
        record["paths"] = {name: f"{item_id}/{name}" for name in OUTPUT_FILES if (folder / name).exists()}

    def done_ids(self) -> set[str]:
        return {i for i, r in self.items.items() if r["state"] == "done"}

    def mark_reused(self) -> None:
        for record in self.items.values():
            record["reused"] = record["state"] == "done"  # finished in an earlier run: skipped now

    def start(self, item_id: str) -> None:
        self.items[item_id].update(state="running", error=None, dispatched=time.time())

    def finish(self, outcome: dict[str, Any]) -> None:
        """Merge an item runner's outcome (item_runner.BatchItemRunner.run) and what the item's folder now holds."""
        record = self.items[outcome["id"]]
        record.pop("step", None)  # only meaningful while it trains
        # handed out -> outcome back, as the driver saw it; minus the worker's wall_s: the scheduling overhead
        record["driver_s"] = time.time() - record.pop("dispatched", time.time())
        record["state"] = outcome["state"] if outcome["state"] in STATES else "pending"  # stopped: resumable
        self._merge_files(outcome["id"])
        if outcome["state"] == "failed":  # the worker may not have written its status (a lost process)
            record.update(state="failed", error=outcome.get("error"))

    def refresh_running(self, progress: dict[str, dict]) -> None:
        """Running items: their step, and the attempt and process from their folder."""
        for item_id, record in self.items.items():
            if record["state"] == "running":
                status = read_status(self.out / item_id)
                record.update({k: status[k] for k in ("attempt", "worker") if k in status})
                if item_id in progress:
                    record["step"] = progress[item_id]["step"]

    def counts(self) -> dict[str, int]:
        records = [*self.items.values(), *self.invalid]
        return {state: sum(r["state"] == state for r in records) for state in STATES}

    def to_dict(self) -> dict[str, Any]:
        now = time.time()
        finished_now = sum(r["state"] == "done" and not r.get("reused") for r in self.items.values())
        items = []
        for record in self.items.values():
            shown = dict(record)
            for key in ("started", "finished", "dispatched"):
                if isinstance(shown.get(key), (int, float)):
                    shown[key] = iso(shown[key])
            items.append(shown)
        return {"distill3d": __version__, **self.meta, "started": iso(self.started), "updated": iso(now),
                "wall_s": now - self.started, "counts": self.counts(),
                "items_per_hour": finished_now / max(now - self.started, 1e-9) * 3600.0,
                "items": items + self.invalid}

    def write(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        return write_atomic(self.out / INDEX_FILE, json.dumps(self.to_dict(), indent=1, default=str))
