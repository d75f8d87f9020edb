"""Where a device's jobs run. The server's DeviceWorker thread (worker.py) drives one JobExecutor per
device through four calls: run a job, receive its messages, cancel it, close. ProcessExecutor runs
the jobs in a local worker process (job_process.py); RayExecutor (ray_executor.py) hands them to a Ray
actor through the same calls, and the server does not change.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from abc import ABC, abstractmethod
from typing import Any

from .job_process import JobSpec, WorkerOptions, worker_main

log = logging.getLogger(__name__)


class WorkerLost(Exception):
    """The worker running a job went away (killed, crashed); the message says how, for the job's status."""


class JobExecutor(ABC):
    loaded_priors: list[dict[str, Any]]

    @abstractmethod
    def run(self, spec: JobSpec) -> None:
        """Start a job (one at a time); its messages then come from receive()."""

    @abstractmethod
    def receive(self, timeout_s: float) -> tuple | None:
        """The next message of the running job ("event", ...) or ("end", job_id, outcome); None after
        timeout_s without one. Raises WorkerLost if the worker died."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Ask the running job to stop at its next step (any thread)."""

    @abstractmethod
    def stop(self) -> None:
        """Ask the running job to checkpoint and stop, and the worker to end (returns at once)."""

    @abstractmethod
    def close(self, wait_s: float) -> None:
        """Wait up to wait_s for the worker to end after stop(), then end it by force."""


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        why = {"SIGKILL": " (often the system running out of memory)", "SIGSEGV": " (a crash in native code)",
               "SIGABRT": " (a crash in native code)", "SIGBUS": " (a crash in native code)"}.get(name, "")
        return f"the worker process running the job was killed by {name}{why}"
    return f"the worker process running the job exited unexpectedly (exit code {exitcode})"


class ProcessExecutor(JobExecutor):
    """A worker process (spawned, so it shares no state with the server) kept alive between jobs;
    started on the first job and again on the next job after it died."""

    def __init__(self, device: str, options: WorkerOptions):
        self.device, self.options = device, options
        self.loaded_priors = []
        self._context = multiprocessing.get_context("spawn")
        self._process = self._commands = self._events = None
        self._lock = threading.Lock()  # the command pipe is written from the worker and command threads

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        commands_out, commands_in = self._context.Pipe(duplex=False)
        events_out, events_in = self._context.Pipe(duplex=False)
        process = self._context.Process(target=worker_main, args=(self.device, self.options, commands_out, events_in),
                                        name=f"distill3d-worker-{self.device}", daemon=True)
        process.start()
        commands_out.close()  # the child's ends: closed here, so either side sees EOF when the other dies
        events_in.close()
        self._process, self._commands, self._events = process, commands_in, events_out
        log.info("worker process %d started for %s", process.pid, self.device)

    def _send(self, message: tuple) -> None:
        with self._lock:
            if self._commands is not None:
                try:
                    self._commands.send(message)
                except OSError:
                    pass  # the process is gone; receive() reports it

    def run(self, spec: JobSpec) -> None:
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self._discard()
                self._start()
        self._send(("run", spec))

    def receive(self, timeout_s: float) -> tuple | None:
        process, events = self._process, self._events  # close() may drop them from another thread
        if process is None:
            raise WorkerLost("the worker process running the job was stopped")
        try:
            if events.poll(timeout_s):
                message = events.recv()
                if message[0] == "priors":
                    self.loaded_priors = message[1]
                return message
        except (EOFError, OSError, ValueError):  # ValueError: the pipe was closed here
            pass
        else:
            if process.is_alive():
                return None
        process.join(5)
        reason = describe_exit(process.exitcode)
        with self._lock:
            if self._process is process:
                self._discard()
        raise WorkerLost(reason)

    def cancel(self, job_id: str) -> None:
        self._send(("cancel", job_id))

    def stop(self) -> None:
        self._send(("stop",))

    def close(self, wait_s: float) -> None:
        process = self._process
        if process is not None:
            process.join(wait_s)
            if process.is_alive():
                log.warning("worker process %d did not stop in %.0f s: killing it", process.pid, wait_s)
                process.kill()
                process.join(10)
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        for pipe in (self._commands, self._events):
            if pipe is not None:
                pipe.close()
        self._process = self._commands = self._events = None
        self.loaded_priors = []
