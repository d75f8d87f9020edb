"""BatchItemRunner: runs batch items one after another on one device, through the same `train()` as
a single generate, keeping the loaded prior between items (backend/runner/prior_cache.py, which the
server's job runner uses too).

The same class runs in-process and, wrapped by ray.remote, as a Ray actor. An item resumes from its
checkpoint when one is there (a rerun, or Ray retrying it after its worker died). Each item folder
gets a small `batch_item.json` beside generate's files: which attempt, which process, the outcome.
"""
from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from shared.results import CHECKPOINT

from ..errors import UserError
from ..events import Event, Progress
from ..fileio import write_atomic

STATUS_FILE = "batch_item.json"


def read_status(item_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(item_dir) / STATUS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_status(item_dir: Path, status: dict[str, Any]) -> None:
    write_atomic(Path(item_dir) / STATUS_FILE, json.dumps(status, indent=1, default=str))


class BatchItemRunner:
    """Runs batch items; `stop()` and `progress()` may be called from another thread (a Ray actor
    with max_concurrency=2) while `run()` trains."""

    def __init__(self, threads: int | None = None):
        from ..runner.prior_cache import PriorCache

        if threads:
            import torch
            torch.set_num_threads(threads)
        self.priors = PriorCache(capacity=1)  # one device, one batch: one prior at a time
        self.stopping = False
        self.current: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        import torch

        return {"host": socket.gethostname(), "pid": os.getpid(), "torch_threads": torch.get_num_threads()}

    def stop(self) -> None:
        """Stop the current item after its step (checkpoint written) and start no other."""
        self.stopping = True

    def progress(self) -> dict[str, Any] | None:
        """{"id", "step", "total", "it_per_s"} of the item being trained, or None."""
        return dict(self.current) if self.current else None

    def run(self, item: dict[str, Any], out_root: str, on_event: Callable[[Event], None] | None = None) -> dict:
        """Train item {"id", "config"} into out_root/<id>; return its outcome (see batch.json's items).
        The config is a GenerateConfig, valid since the spec was read (spec.py): it is not checked again."""
        item_dir = Path(out_root) / item["id"]
        if self.stopping:
            return {"id": item["id"], "state": "pending"}
        item_dir.mkdir(parents=True, exist_ok=True)
        resume = (item_dir / CHECKPOINT).exists()
        status = {"state": "running", "attempt": read_status(item_dir).get("attempt", 0) + 1, "resumed": resume,
                  "worker": self.identity(), "started": time.time()}
        write_status(item_dir, status)
        self.current = {"id": item["id"], "step": 0, "total": item["config"].steps, "it_per_s": 0.0}
        first_step: list[int] = []

        def on_train_event(event: Event) -> None:
            if isinstance(event, Progress):
                if not first_step:
                    first_step.append(event.step - 1)  # the step training (re)started from
                self.current.update(step=event.step, total=event.total, it_per_s=event.it_per_s)
            if on_event is not None:
                on_event(event)

        try:
            outcome = self._train(item, item_dir, resume, on_train_event)
        except Exception as error:  # recorded, and the batch goes on
            message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
            outcome = {"state": "failed", "error": message, "traceback": traceback.format_exc()}
        finally:
            self.current = None
        if resume:
            outcome["resumed_from_step"] = first_step[0] if first_step else outcome.get("steps_done")
        status.update(outcome, wall_s=time.time() - status["started"], finished=time.time())
        write_status(item_dir, status)
        return {"id": item["id"], **{k: v for k, v in status.items() if k != "traceback"}}

    def _train(self, item: dict[str, Any], item_dir: Path, resume: bool, on_event: Callable[[Event], None]) -> dict:
        from ..devices import canonical_device
        from ..train import train

        config = item["config"]
        device = canonical_device(config.device)
        wanted = {"name": config.prior, "device": device, "resolution": config.resolution,
                  "options": dict(config.prior_options)}
        prior_reused = wanted in self.priors.loaded()
        started = time.perf_counter()
        prior = self.priors.get(config.prior, device, config.resolution, offline=config.offline,
                                options=config.prior_options)
        prior_load_s = time.perf_counter() - started
        result = train(config, item_dir, on_event=on_event, should_stop=lambda: self.stopping, prior=prior,
                       resume=resume)
        if result.stopped:
            return {"state": "stopped", "prior_load_s": prior_load_s, "prior_reused": prior_reused}
        report = result.report
        metrics = dict(report.get("ground_truth") or {})
        if not metrics:  # no ground truth: score the result with the prior itself (score.py)
            from ..checkpoint import load_model
            from .score import prior_score

            try:
                model, _ = load_model(result.outputs[CHECKPOINT], device=device)
                metrics.update(prior_score(model, prior, config.resolution))
            except Exception as error:  # the item itself is fine: keep it, unranked
                metrics["prior_loss_error"] = f"{type(error).__name__}: {error}"
        return {"state": "done", "steps_done": report["steps_done"], "train_s": report["total_time_s"],
                "prior_load_s": prior_load_s, "prior_reused": prior_reused, "metrics": metrics,
                "export_error": report["export"].get("error")}

