"""A batch run: skip finished items, run the rest in-process or on Ray, keep batch.json current,
then rank (--keep-best) and draw the contact sheet."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .index import BatchIndex
from .progress import BatchBar
from .select import mark_best
from .sheet import write_contact_sheet
from .spec import Invalid, Item
from .item_runner import BatchItemRunner

INDEX_EVERY_S = 2.0  # batch.json rewrites while items train (their steps), besides one per state change


@dataclass
class BatchOptions:
    out: Path
    ray: str | None = None        # None: in-process; "local": a local Ray; else a cluster address
    workers: int | None = None
    keep_best: int = 0
    show_progress: bool = True


def run_batch(items: list[Item], invalid: list[Invalid], options: BatchOptions,
              stop_requested: Callable[[], bool] = lambda: False, meta: dict[str, Any] | None = None) -> BatchIndex:
    out = Path(options.out)
    mode = f"ray {options.ray}" if options.ray else "in-process"
    index = BatchIndex(out, items, invalid, {**(meta or {}), "mode": mode, "keep_best": options.keep_best})
    index.mark_reused()
    todo = [{"id": item.id, "config": item.config} for item in items if item.id not in index.done_ids()]
    index.write()
    bar = BatchBar(len(items), len(items) - len(todo), enabled=options.show_progress)
    for bad in invalid:
        bar.write(f"skipped {bad.error}")
    last_write = [time.monotonic()]

    def on_start(item_id: str) -> None:
        index.start(item_id)
        index.write()

    def on_outcome(outcome: dict) -> None:
        index.finish(outcome)
        index.write()
        if outcome["state"] == "done":
            bar.item_finished()
        elif outcome["state"] == "failed":
            bar.write(f"failed {outcome['id']}: {outcome.get('error')}")

    def on_tick(progress: dict[str, dict]) -> None:
        bar.show(progress)
        if time.monotonic() - last_write[0] >= INDEX_EVERY_S:
            index.refresh_running(progress)
            index.write()
            last_write[0] = time.monotonic()

    try:
        if todo and options.ray:
            from ..runner import ray_connection
            from .ray_pool import run_on_ray

            index.meta.update(ray_connection.connect(options.ray))
            try:
                index.meta.update(run_on_ray(todo, str(out), options.workers, on_start, on_outcome, on_tick,
                                             stop_requested))
            finally:
                ray_connection.disconnect()
        elif todo:
            run_in_process(todo, str(out), on_start, on_outcome, on_tick, stop_requested)
    finally:  # also on a second Ctrl-C: whatever finished is indexed and on the sheet
        bar.close()
        finish(index, options.keep_best)
    return index


def run_in_process(payloads: list[dict], out: str, on_start, on_outcome, on_tick, stop_requested) -> None:
    """Items one after another on this process's device, one BatchItemRunner (so one loaded prior)."""
    runner = BatchItemRunner()

    def on_event(event) -> None:
        if stop_requested():
            runner.stop()
        snapshot = runner.progress()
        on_tick({snapshot["id"]: snapshot} if snapshot else {})

    for payload in payloads:
        if stop_requested():
            break
        on_start(payload["id"])
        on_outcome(runner.run(payload, out, on_event=on_event))


def finish(index: BatchIndex, keep_best: int) -> None:
    records = list(index.items.values())
    if keep_best:
        mark_best(records, keep_best)
    for record in index.items.values():
        if record["state"] == "running":  # interrupted before its worker answered
            record["state"] = "pending"
    sheet = write_contact_sheet(index.out, records)
    if sheet is not None:
        index.meta["contact_sheet"] = sheet.name
    index.write()
