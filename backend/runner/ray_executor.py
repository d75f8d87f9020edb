"""Running a device's jobs on a Ray cluster (`serve --ray ADDRESS|local`): the JobExecutor of
executor.py backed by one Ray actor instead of a local job process. The actor is a JobRunner
(job_runner.py), so a job runs exactly as it does locally, and it keeps its loaded priors between
jobs. It holds one GPU when the cluster has any (else the cluster's CPUs), and trains on that device.

Messages ("event", ...), ("end", ...), ("priors", ...) wait in the actor until the server's
DeviceThread takes them (a long poll: take() returns as soon as there is one). The actor runs up to
four calls at once (max_concurrency), so take, cancel and stop are answered while a job trains. A
dead actor (killed, out of memory, its node lost) is reported as WorkerLost: the job fails and the
next job starts a new actor. Job files are written by the actor straight into the server's data
folder, so on a multi-machine cluster that folder must be on a filesystem every node mounts at the
same path (docs/server.md, "Running jobs on Ray").
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import deque
from dataclasses import replace
from typing import Any

from .executor import JobExecutor, WorkerLost
from .job_runner import JobRunner, JobSpec, RunnerOptions
from .ray_connection import actor_options, first_line

log = logging.getLogger(__name__)

ACTOR_CALLS = 4  # run, take, cancel and stop can all be in flight at once


class RayJobActor(JobRunner):
    """The actor's side (wrapped by ray.remote in RayExecutor)."""

    def __init__(self, options: RunnerOptions, threads: int | None):
        import ray

        logging.basicConfig(level=options.log_level, format="%(asctime)s %(levelname)s [ray worker] %(message)s")
        if threads:
            import torch
            torch.set_num_threads(threads)
        # An empty working folder, as in the job process: a Hub id is never read as a relative path.
        os.chdir(tempfile.mkdtemp(prefix="distill3d-ray-worker-"))
        super().__init__(options)
        self.device = "cuda:0" if ray.get_gpu_ids() else "cpu"  # Ray makes its GPU the only one visible
        self._messages: deque[tuple] = deque()
        self._ready = threading.Condition()

    def send(self, *message: Any) -> None:
        with self._ready:
            self._messages.append(message)
            self._ready.notify_all()

    def take(self, wait_s: float) -> list[tuple]:
        """The messages waiting (waits up to wait_s for one)."""
        with self._ready:
            self._ready.wait_for(lambda: self._messages, timeout=wait_s)
            batch = list(self._messages)
            self._messages.clear()
        return batch

    def run_job(self, spec: JobSpec) -> None:
        # The one setting placed here: the device Ray gave this actor (a copy; the config is frozen).
        self.run_and_report(replace(spec, config=replace(spec.config, device=self.device)))

    def identity(self) -> dict[str, Any]:
        import socket

        return {"host": socket.gethostname(), "pid": os.getpid(), "device": self.device}


class RayExecutor(JobExecutor):
    """One actor for one server device; started on the first job, and again after it died.
    Needs Ray connected first (ray_connection.connect)."""

    def __init__(self, device: str, options: RunnerOptions):
        self.device, self.options = device, options
        self.loaded_priors = []
        self._actor = None
        self._job = None        # the running job's run_job() reference
        self._take = None       # the take() call in flight
        self._waiting: deque[tuple] = deque()
        self._lock = threading.Lock()

    @property
    def actor(self):
        return self._actor

    def _start(self) -> None:
        import ray

        _, resources, threads = actor_options(1, 1)
        actor_class = ray.remote(max_restarts=0, max_concurrency=ACTOR_CALLS, **resources)(RayJobActor)
        self._actor = actor_class.remote(self.options, threads)
        log.info("Ray worker actor started for %s with %s", self.device, resources)

    def run(self, spec: JobSpec) -> None:
        with self._lock:
            if self._actor is None:
                self._start()
            self._job = self._actor.run_job.remote(spec)

    def receive(self, timeout_s: float) -> tuple | None:
        import ray
        from ray.exceptions import RayError

        if self._waiting:
            return self._next()
        actor = self._actor
        if actor is None:
            raise WorkerLost("the Ray worker running the job was stopped")
        if self._take is None:
            self._take = actor.take.remote(timeout_s)
        ready, _ = ray.wait([self._take], timeout=timeout_s)
        if not ready:
            return None  # the take() stays in flight; its messages come with the next receive()
        reference, self._take = self._take, None
        try:
            self._waiting.extend(ray.get(reference))
        except RayError as error:  # the actor died, or its node was lost
            with self._lock:
                if self._actor is actor:
                    self._discard()
            raise WorkerLost(f"the Ray worker running the job was lost ({first_line(error)})") from None
        return self._next() if self._waiting else None

    def _next(self) -> tuple:
        message = self._waiting.popleft()
        if message[0] == "priors":
            self.loaded_priors = message[1]
        return message

    def cancel(self, job_id: str) -> None:
        actor = self._actor
        if actor is not None:
            actor.cancel.remote(job_id)

    def stop(self) -> None:
        actor = self._actor
        if actor is not None:
            actor.stop.remote()

    def close(self, wait_s: float) -> None:
        import ray

        actor, job = self._actor, self._job
        if actor is None:
            return
        if job is not None:
            ray.wait([job], timeout=wait_s)  # the job checkpoints after stop()
        ray.kill(actor)
        with self._lock:
            if self._actor is actor:
                self._discard()

    def _discard(self) -> None:
        self._actor = self._job = self._take = None
        self._waiting.clear()
        self.loaded_priors = []

