"""The worker process: runs one device's jobs one at a time, outside the server process.

Training, export, PNG encoding and model loading all happen here, so native code holding the GIL, a
CUDA out-of-memory crash, a segfault or a runaway export cannot starve or kill the server. The
process stays alive between jobs with its loaded priors (prior_cache.py), so the second job on a
device does not reload the model. Every job ends with exactly one "end" message: done (with its
outputs), cancelled, stopped (the server is shutting down; it resumes from its checkpoint), or
failed with a sentence the user can act on.

Messages are plain tuples over two one-way multiprocessing pipes between this machine's processes
(never a client socket):
    server -> worker: ("run", JobSpec), ("cancel", job_id), ("stop",)  [stop: checkpoint and exit]
    worker -> server: ("event", job_id, type, fields, frames), ("end", job_id, outcome), ("priors", [...])
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import signal
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from shared.protocol import ProtocolError

from ..errors import UserError
from ..events import Progress
from .datadir import write_problem
from .prior_cache import Loader, PriorCache, free_device_memory
from .reporter import JobReporter
from .requests import config_from_request
from .uploads import source_mesh_path

log = logging.getLogger(__name__)

TrainFn = Callable[..., Any]  # backend.train.train's signature

# Sentences written for the command line that a server user cannot act on -> what they can do.
_CLI_WORDING = {
    "delete it and run again": "resubmit the job (it then starts from the beginning)",
    "choose another folder with --out": "resubmit the job once the backend's data folder can be written",
    "resume with the same prompt, or use another --out": "resubmit the job",
}


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
class WorkerOptions:
    """What every worker process of a server shares (picklable: it crosses into the new process)."""
    train_fn: TrainFn | None = None          # None: backend.train.train
    prior_loader: Loader | None = None       # None: backend.priors.load_prior
    max_priors: int = 2
    log_level: int = logging.INFO
    nice: int = 0                            # added to the worker's CPU niceness (Unix): commands win the CPU


@dataclass
class JobSpec:
    job_id: str
    folder: str
    request: dict[str, Any]
    device: str
    prior: str                 # as resolved by models.ModelRoots: a built-in name, a Hub id or a real folder
    resume: bool
    coarse_mesh_every: int
    preview_interval_s: float
    progress_interval_s: float


def describe_failure(error: BaseException, step: int) -> str:
    """One sentence saying why a job failed and what to do, as a server user (not a CLI user) can."""
    torch = sys.modules.get("torch")
    if isinstance(error, UserError):
        message = str(error)
        for cli, server in _CLI_WORDING.items():
            message = message.replace(cli, server)
        return message
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        return (f"the GPU ran out of memory at step {step}: lower resolution or batch_size, choose a smaller preset, "
                "or close other programs using the GPU, then resubmit the job")
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC),
                                                      errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"{write_problem(error)}, so the job stopped at step {step}: resubmit the job once the backend's "
                "operator has freed space or fixed the folder")
    if isinstance(error, ProtocolError):  # a stored request this backend no longer accepts
        return f"this job's request is no longer valid ({error}): resubmit the job"
    return (f"the job crashed at step {step} ({type(error).__name__}: {error}); the backend log has the details. "
            "Try another seed or a lower lr, and report it if it happens again")


class JobRunner:
    """Runs one device's jobs one at a time, keeping the loaded priors between them. How its messages
    travel is the subclass's send(): the worker process's pipe here (_Worker), a Ray actor's buffer
    (ray_executor.py). cancel() and stop() may be called from another thread while run() trains."""

    def __init__(self, options: WorkerOptions):
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
            config = config_from_request(spec.request, spec.device, spec.coarse_mesh_every,
                                         source_mesh_path(spec.folder))
            config = replace(config, prior=spec.prior)
            prior = self.priors.get(config.prior, config.device, config.resolution, config.offline,
                                    config.prior_options)
            result = self.train_fn(config, Path(spec.folder), on_event=on_event, should_stop=should_stop,
                                   prior=prior, resume=spec.resume)
            reporter.flush()
            if getattr(result, "stopped", False):
                outcome = {"state": "cancelled" if spec.job_id in self.cancelled else "stopped"}
            else:
                outputs = getattr(result, "outputs", {}) or {}
                outcome = {"state": "done", "outputs": {str(name): str(path) for name, path in outputs.items()}}
        except Exception as error:  # noqa: BLE001 - every failure ends as a recorded state
            if not isinstance(error, (UserError, ProtocolError)):
                log.error("job %s crashed:\n%s", spec.job_id, traceback.format_exc())
            outcome = {"state": "failed", "message": describe_failure(error, step[0]),
                       "error_type": type(error).__name__}
            error.__traceback__ = None  # its frames hold the job's tensors
        prior = result = reporter = None
        free_device_memory()  # the job's tensors are garbage now: give them back before saying it ended
        self.cancelled.discard(spec.job_id)
        return outcome


class _Worker(JobRunner):
    """The worker process's loop: commands from one pipe, messages back on the other."""

    def __init__(self, device: str, options: WorkerOptions, commands, events):
        super().__init__(options)
        self.device, self.commands, self.events = device, commands, events
        self.jobs: queue.Queue[JobSpec | None] = queue.Queue()
        self._send_lock = threading.Lock()

    def send(self, *message: Any) -> None:
        try:
            with self._send_lock:
                self.events.send(message)
        except (OSError, ValueError):  # the server is gone: nobody is left to report to
            os._exit(0)

    def listen(self) -> None:
        """The commands from the server, on their own thread, so a cancel lands while a job runs."""
        while True:
            try:
                message = self.commands.recv()
            except (EOFError, OSError):  # the server died (kill -9): stop at once, as if killed with it
                os._exit(0)
            if message[0] == "run":
                self.jobs.put(message[1])
            elif message[0] == "cancel":
                self.cancel(message[1])
            elif message[0] == "stop":
                self.stop()
                self.jobs.put(None)

    def serve(self) -> None:
        threading.Thread(target=self.listen, name="distill3d-worker-commands", daemon=True).start()
        while (spec := self.jobs.get()) is not None:
            self.run_and_report(spec)


def worker_main(device: str, options: WorkerOptions, commands, events) -> None:
    """The worker process's entry point (multiprocessing, spawn context)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole process group: the server decides
    if options.nice and hasattr(os, "nice"):
        os.nice(options.nice)
    logging.basicConfig(level=options.log_level, format=f"%(asctime)s %(levelname)s [worker {device}] %(message)s")
    # An empty working folder: a Hub id such as "etc/passwd" can never be read as a relative path.
    with tempfile.TemporaryDirectory(prefix="distill3d-worker-", ignore_cleanup_errors=True) as empty:
        os.chdir(empty)
        _Worker(device, options, commands, events).serve()
        os.chdir(Path(empty).parent)
