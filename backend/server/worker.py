"""One worker thread per device runs that device's jobs one at a time, so the command loop never
waits on training. A job's end is always recorded: done (with its outputs), cancelled, failed with a
message the user can act on, or queued again when the server shuts down mid-job (it resumes from
its checkpoint at the next start)."""
from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from shared.protocol import ProtocolError

from ..errors import UserError
from .jobs import Job, JobStore
from .prior_cache import PriorCache, free_device_memory
from .publish import EventBus
from .reporter import JobReporter
from .requests import config_from_request

log = logging.getLogger(__name__)

TrainFn = Callable[..., Any]  # backend.train.train's signature


def _default_train(*args: Any, **kwargs: Any) -> Any:
    from ..train import train

    return train(*args, **kwargs)


@dataclass
class RunSettings:
    """The server-wide choices every job run shares."""
    default_device: str
    coarse_mesh_every: int = 100
    preview_interval_s: float = 0.5
    progress_interval_s: float = 0.1


class JobRunner:
    """Runs one job to its end. Shared by the device workers."""

    def __init__(self, store: JobStore, bus: EventBus, priors: PriorCache, settings: RunSettings,
                 train_fn: TrainFn | None = None):
        self.store, self.bus, self.priors, self.settings = store, bus, priors, settings
        self.train_fn = train_fn or _default_train
        self.shutting_down = threading.Event()

    def run(self, job: Job) -> None:
        if job.cancel.is_set():
            self.store.update(job, state="cancelled", message="cancelled before it started", finished=time.time())
            return
        resume = job.checkpoint.exists()
        self.store.update(job, state="running", started=time.time(), attempts=int(job.status.get("attempts", 0)) + 1,
                          message=f"resuming from the checkpoint in {job.folder.name}" if resume else "")
        reporter = JobReporter(job, self.store, self.bus, self.settings.preview_interval_s,
                               self.settings.progress_interval_s)
        result = error = None
        try:
            device = job.status.get("device") or self.settings.default_device  # "auto" as resolved at submit
            config = config_from_request(job.request, device, self.settings.coarse_mesh_every)
            prior = self.priors.get(config.prior, config.device, config.resolution, config.offline,
                                    config.prior_options)
            result = self.train_fn(config, job.folder, on_event=reporter,
                                   should_stop=lambda: job.cancel.is_set() or self.shutting_down.is_set(),
                                   prior=prior, resume=resume)
        except Exception as caught:  # noqa: BLE001 - every failure must end as a recorded state
            error = caught
            if not isinstance(error, (UserError, ProtocolError)):
                log.error("job %s crashed:\n%s", job.job_id, traceback.format_exc())
            error.__traceback__ = None  # its frames hold the job's tensors
        reporter.flush()
        prior = reporter = None
        free_device_memory()  # the job's tensors are garbage now: give them back before saying it ended
        if error is None:
            self._finish(job, result)
        else:
            self._fail(job, error)

    def _finish(self, job: Job, result: Any) -> None:
        step = job.status.get("step", 0)
        if getattr(result, "stopped", False):
            if job.cancel.is_set():
                self.store.update(job, state="cancelled", message=f"cancelled at step {step}", finished=time.time())
            else:
                self.store.update(job, state="queued", message=f"the backend stopped at step {step}: the job resumes "
                                                               "from its checkpoint when the backend starts again")
            return
        outputs = self.store.record_outputs(job, dict(getattr(result, "outputs", {}) or {}))
        self.store.update(job, state="done", message="finished", finished=time.time(), outputs=outputs,
                          step=job.status.get("total", step))
        self.bus.publish(job.job_id, "result", {"outputs": sorted(outputs)})

    def _fail(self, job: Job, error: Exception) -> None:
        step = job.status.get("step", 0)
        torch = sys.modules.get("torch")
        if isinstance(error, UserError):
            message = str(error)
        elif torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
            message = (f"the GPU ran out of memory at step {step}: lower resolution or batch_size, choose a smaller "
                       "preset, or close other programs using the GPU, then submit again")
        elif isinstance(error, ProtocolError):  # a stored request this backend no longer accepts
            message = f"this job's request is no longer valid ({error}): submit it again"
        else:
            message = (f"the job crashed at step {step} ({type(error).__name__}: {error}); the backend log has the "
                       "details. Try another seed or a lower lr, and report it if it happens again")
        self.store.update(job, state="failed", message=message, finished=time.time(),
                          error_type=type(error).__name__)
        self.bus.publish(job.job_id, "log", {"level": "error", "message": message})


class DeviceWorker(threading.Thread):
    """A queue of jobs for one device and the thread that runs them in order."""

    def __init__(self, device: str, runner: JobRunner):
        super().__init__(name=f"distill3d-worker-{device}", daemon=True)
        self.device, self.runner = device, runner
        self._queue: deque[Job] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self.current: Job | None = None

    def enqueue(self, job: Job) -> None:
        with self._wakeup:
            self._queue.append(job)
            self._wakeup.notify()

    def remove(self, job: Job) -> bool:
        """Take a queued job out; False if it is not waiting here (running or already taken)."""
        with self._wakeup:
            if job in self._queue:
                self._queue.remove(job)
                return True
            return False

    def queued(self) -> int:
        with self._wakeup:
            return len(self._queue)

    def stop(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()

    def run(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._stopping:
                    self._wakeup.wait()
                if self._stopping:
                    return
                self.current = self._queue.popleft()
            try:
                self.runner.run(self.current)
            finally:
                self.current = None
