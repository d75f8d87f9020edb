"""One DeviceThread per device, in the server process: it keeps that device's queue, hands one job
at a time to the device's JobExecutor (backend/runner/: a local job process or a Ray actor), relays
the job's events to subscribers and records how the job ended. A job reaches it with its
GenerateConfig already built and placed (requests.py), which the JobSpec carries as it is. The thread itself only waits on a pipe and
writes small status files, so it never holds the GIL for long and never dies: any failure (a write
error, a dead worker process) ends that job, and the next job runs.

A job's end is always recorded: done (with its outputs), cancelled, failed with a message the user
can act on, or queued again when the server shuts down mid-job (it resumes from its checkpoint at
the next start).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from shared.protocol import CANCELLED, DONE, FAILED, QUEUED, RUNNING
from shared.results import CHECKPOINT

from ..runner.executor import JobExecutor, WorkerLost
from ..runner.job_runner import STOPPED, JobSpec
from .datadir import is_real_dir, is_real_file_inside
from .jobs import Job, JobStore
from .publish import EventBus
from .uploads import SOURCE_MESH_NAME

log = logging.getLogger(__name__)

RECEIVE_S = 0.2  # how often the relay loop looks at a job's cancel flag between messages


@dataclass
class RunSettings:
    """The server-wide choices every job run shares."""
    default_device: str
    coarse_mesh_every: int = 100
    preview_interval_s: float = 0.5
    progress_interval_s: float = 0.1


class DeviceThread(threading.Thread):
    """A queue of jobs for one device and the thread that runs them in order on its executor."""

    def __init__(self, device: str, executor: JobExecutor, store: JobStore, bus: EventBus, settings: RunSettings):
        super().__init__(name=f"distill3d-device-{device}", daemon=True)
        self.device, self.executor, self.store, self.bus = device, executor, store, bus
        self.settings = settings
        self._queue: deque[Job] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self.current: Job | None = None

    # -- called from the command thread ----------------------------------------------------------------

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

    def cancel(self, job: Job) -> None:
        """Ask the running job to stop (its cancel flag is already set)."""
        if self.current is job:
            self.executor.cancel(job.job_id)

    def queued(self) -> int:
        with self._wakeup:
            return len(self._queue)

    def stop(self) -> None:
        """The running job checkpoints and goes back to "queued"; then the thread and its worker end."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self.executor.stop()

    # -- the thread -------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                with self._wakeup:
                    while not self._queue and not self._stopping:
                        self._wakeup.wait()
                    if self._stopping:
                        return
                    self.current = self._queue.popleft()
                try:
                    self._run(self.current)
                except Exception as error:  # noqa: BLE001 - the queue must outlive any one job
                    log.exception("job %s: the server failed while running it", self.current.job_id)
                    if self._stopping:  # stays as it is on disk; the next start recovers it
                        return
                    self._fail(self.current, f"the backend failed while running the job ({type(error).__name__}: "
                                             f"{error}); its log has the details: resubmit the job", "ServerError")
                finally:
                    self.current = None
        finally:
            self.executor.close(wait_s=30.0)

    def _run(self, job: Job) -> None:
        if job.cancel.is_set():
            self.store.update(job, state=CANCELLED, message="cancelled before it started", finished=time.time())
            return
        if not is_real_dir(job.folder) or (job.config.source_mesh is not None
                                           and not is_real_file_inside(job.folder, SOURCE_MESH_NAME)):
            self._fail(job, "the job's folder or its uploaded mesh is no longer real inside the backend's data "
                            "folder, so the job cannot run: resubmit the job", "DataFolderError")
            return
        resume = is_real_file_inside(job.folder, CHECKPOINT)
        self.store.update(job, state=RUNNING, started=time.time(), attempts=int(job.status.get("attempts", 0)) + 1,
                          message=f"resuming from the checkpoint in {job.folder.name}" if resume else "")
        spec = JobSpec(job.job_id, str(job.folder), job.config, resume, self.settings.preview_interval_s,
                       self.settings.progress_interval_s)
        self.executor.run(spec)
        self._relay(job)

    def _relay(self, job: Job) -> None:
        """Pass the job's events on until it ends."""
        cancel_sent = stop_sent = False
        while True:
            if job.cancel.is_set() and not cancel_sent:  # in case the cancel raced the job's start
                self.executor.cancel(job.job_id)
                cancel_sent = True
            if self._stopping and not stop_sent:  # in case stop() raced the job's start
                self.executor.stop()
                stop_sent = True
            try:
                message = self.executor.receive(RECEIVE_S)
            except WorkerLost as lost:
                if self._stopping:  # killed at shutdown: stays "running" on disk, resumes at the next start
                    return
                step = job.status.get("step", 0)
                self._fail(job, f"{lost} at step {step}: resubmit the job (with a lower resolution or fewer steps "
                                "if it happens again); the backend log may have details", "WorkerLost")
                return
            if message is None:
                continue
            if message[0] == "event":
                self._event(job, *message[2:])
            elif message[0] == "end":
                self._end(job, message[2])
                return

    def _event(self, job: Job, kind: str, fields: dict[str, Any], frames: list[bytes]) -> None:
        if kind == "progress":
            self.store.update(job, persist=False, step=fields["step"], total=fields["total"])
        elif kind == "preview":
            self.store.update(job, persist=False, preview_step=fields["step"])
        self.bus.publish(job.job_id, kind, fields, *frames)

    def _end(self, job: Job, outcome: dict[str, Any]) -> None:
        step = job.status.get("step", 0)
        state = outcome["state"]
        if state == DONE:
            outputs = self.store.record_outputs(job, outcome.get("outputs", {}))
            self.store.update(job, state=DONE, message="finished", finished=time.time(), outputs=outputs,
                              step=job.status.get("total", step))
            self.bus.publish(job.job_id, "result", {"outputs": sorted(outputs)})
        elif state == CANCELLED:
            self.store.update(job, state=CANCELLED, message=f"cancelled at step {step}", finished=time.time())
        elif state == STOPPED:
            self.store.update(job, state=QUEUED, message=f"the backend stopped at step {step}: the job resumes "
                                                           "from its checkpoint when the backend starts again")
        else:
            self._fail(job, outcome["message"], outcome.get("error_type", "Error"), outcome.get("field"))

    def _fail(self, job: Job, message: str, error_type: str, field: str | None = None) -> None:
        """`field`: the setting the error is about, as the first check named it, for the panel."""
        extra = {"field": field} if field else {}
        self.store.update(job, state=FAILED, message=message, finished=time.time(), error_type=error_type, **extra)
        self.bus.publish(job.job_id, "log", {"level": "error", "message": message})
