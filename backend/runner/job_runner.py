"""JobRunner: runs one device's jobs one at a time, keeping the loaded priors between them, and ends
every job with exactly one "end" message: done (with its outputs), cancelled, stopped (the server is
shutting down; it resumes from its checkpoint), or failed with a sentence the user can act on
(failures.py). The job process (process_executor.py) and the Ray actor (ray_executor.py) are
JobRunners that differ only in how their messages travel.

A job arrives as a JobSpec holding the GenerateConfig built when the request crossed the protocol
boundary (backend/server/requests.py): valid by construction, so the runner never parses or checks
the request again (docs/design.md, section 1).
"""
from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from shared.protocol import CANCELLED, DONE, FAILED, ProtocolError

from ..config import GenerateConfig
from ..errors import UserError
from ..events import Progress
from .failures import describe_failure
from .prior_cache import Loader, PriorCache, free_device_memory
from .reporter import JobReporter

log = logging.getLogger(__name__)

TrainFn = Callable[..., Any]  # backend.train.train's signature
STOPPED = "stopped"  # an outcome, not a job state: the server stopped mid-job, which goes back to "queued"


def _default_train(config: Any, *args: Any, **kwargs: Any) -> Any:
    """backend.train.train, or for source "texture" texture mode's loop (same signature; the geometry
    stays fixed, docs/selection.md). Shape mode is train's own business (the field starts as the shape)."""
    if config.source == "texture":
        try:
            from ..texture.train_texture import train_texture
        except ImportError as error:
            raise UserError(f"this backend cannot texture a mesh yet ({error}): update the backend, or use "
                            "source \"new\" or \"shape\"") from None
        return train_texture(config, *args, **kwargs)
    from ..train import train

    return train(config, *args, **kwargs)


@dataclass
class RunnerOptions:
    """What every job runner of a server shares (picklable: it crosses into the job process or Ray actor)."""
    train_fn: TrainFn | None = None          # None: backend.train.train
    prior_loader: Loader | None = None       # None: backend.priors.load_prior
    max_priors: int = 2
    log_level: int = logging.INFO
    nice: int = 0                            # added to the job process's CPU niceness (Unix): commands win the CPU


@dataclass(frozen=True)
class JobSpec:
    """One job as a runner runs it. `config` is placed: its device, prior (as models.ModelRoots
    resolved it) and source_mesh (an absolute path in the job's folder) are where this run happens."""
    job_id: str
    folder: str
    config: GenerateConfig
    resume: bool
    preview_interval_s: float
    progress_interval_s: float


class JobRunner:
    """Runs one device's jobs one at a time, keeping the loaded priors between them. How its messages
    travel is the subclass's send(): the job process's pipe (process_executor.JobProcess), a Ray
    actor's buffer (ray_executor.RayJobActor). cancel() and stop() may be called from another
    thread while run() trains."""

    def __init__(self, options: RunnerOptions):
        self.train_fn = options.train_fn or _default_train
        self.priors = PriorCache(options.prior_loader, options.max_priors)
        self.cancelled: set[str] = set()
        self.stopping = threading.Event()

    def send(self, *message: Any) -> None:
        raise NotImplementedError

    def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)

    def stop(self) -> None:
        self.stopping.set()

    def run_and_report(self, spec: JobSpec) -> None:
        """Run a job, then send the priors now loaded and its ("end", ...): once the server sees the
        end, it already knows what stays loaded."""
        outcome = self.run(spec)
        self.send("priors", self.priors.loaded())
        self.send("end", spec.job_id, outcome)

    def run(self, spec: JobSpec) -> dict[str, Any]:
        step = [0]

        def publish(kind: str, fields: dict, *frames: bytes) -> None:
            self.send("event", spec.job_id, kind, fields, list(frames))

        reporter = JobReporter(spec.job_id, Path(spec.folder), publish, spec.preview_interval_s,
                               spec.progress_interval_s)

        def on_event(event: Any) -> None:
            if isinstance(event, Progress):
                step[0] = int(event.step)
            reporter(event)

        should_stop = lambda: spec.job_id in self.cancelled or self.stopping.is_set()  # noqa: E731
        try:
            config = spec.config
            prior = self.priors.get(config.prior, config.device, config.resolution, config.offline,
                                    config.prior_options)
            result = self.train_fn(config, Path(spec.folder), on_event=on_event, should_stop=should_stop,
                                   prior=prior, resume=spec.resume)
            reporter.flush()
            if getattr(result, "stopped", False):
                outcome = {"state": CANCELLED if spec.job_id in self.cancelled else STOPPED}
            else:
                outputs = getattr(result, "outputs", {}) or {}
                outcome = {"state": DONE, "outputs": {str(name): str(path) for name, path in outputs.items()}}
        except Exception as error:  # noqa: BLE001 - every failure ends as a recorded state
            if not isinstance(error, (UserError, ProtocolError)):
                log.error("job %s crashed:\n%s", spec.job_id, traceback.format_exc())
            outcome = {"state": FAILED, "message": describe_failure(error, step[0]),
                       "error_type": type(error).__name__, "field": getattr(error, "field", None)}
            error.__traceback__ = None  # its frames hold the job's tensors
        prior = result = reporter = None
        free_device_memory()  # the job's tensors are garbage now: give them back before saying it ended
        self.cancelled.discard(spec.job_id)
        return outcome
