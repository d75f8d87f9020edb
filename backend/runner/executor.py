"""Where a device's jobs run. The server's DeviceThread (backend/server/device_thread.py) drives one
JobExecutor per device through five calls: run a job, receive its messages, cancel it, stop, close.
ProcessExecutor (process_executor.py) runs the jobs in a local job process; RayExecutor
(ray_executor.py) hands them to a Ray actor through the same calls, and the server does not change.
Both run a job the same way: through a JobRunner (job_runner.py).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .job_runner import JobSpec


class WorkerLost(Exception):
    """The process running a job (a job process, a Ray actor) went away (killed, crashed); the message
    says how, for the job's status."""


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
