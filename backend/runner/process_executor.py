"""Running a device's jobs in a local job process: ProcessExecutor (the JobExecutor of executor.py, in
the server) and JobProcess (the JobRunner in the spawned process it drives).

Training, export, PNG encoding and model loading all happen in the job process, so native code
holding the GIL, a CUDA out-of-memory crash, a segfault or a runaway export cannot starve or kill the
server. The process stays alive between jobs with its loaded priors (prior_cache.py), so the second
job on a device does not reload the model.

Messages are plain tuples over two one-way multiprocessing pipes between this machine's processes
(never a client socket):
    server -> job process: ("run", JobSpec), ("cancel", job_id), ("stop",)  [stop: checkpoint and exit]
    job process -> server: ("event", job_id, type, fields, frames), ("end", job_id, outcome), ("priors", [...])
A JobSpec crosses the pipe pickled with its GenerateConfig, which is not checked again on the way.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from .executor import JobExecutor, WorkerLost
from .failures import describe_exit
from .job_runner import JobRunner, JobSpec, RunnerOptions

log = logging.getLogger(__name__)


class ProcessExecutor(JobExecutor):
    """A job process (spawned, so it shares no state with the server) kept alive between jobs;
    started on the first job and again on the next job after it died."""

    def __init__(self, device: str, options: RunnerOptions):
        self.device, self.options = device, options
        self.loaded_priors = []
        self._context = multiprocessing.get_context("spawn")
        self._process = self._commands = self._events = None
        self._lock = threading.Lock()  # the command pipe is written from the device and command threads

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        commands_out, commands_in = self._context.Pipe(duplex=False)
        events_out, events_in = self._context.Pipe(duplex=False)
        process = self._context.Process(target=job_process_main,
                                        args=(self.device, self.options, commands_out, events_in),
                                        name=f"distill3d-job-process-{self.device}", daemon=True)
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


class JobProcess(JobRunner):
    """The job process's loop: commands from one pipe, messages back on the other."""

    def __init__(self, device: str, options: RunnerOptions, commands, events):
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
        threading.Thread(target=self.listen, name="distill3d-job-process-commands", daemon=True).start()
        while (spec := self.jobs.get()) is not None:
            self.run_and_report(spec)


def job_process_main(device: str, options: RunnerOptions, commands, events) -> None:
    """The job process's entry point (multiprocessing, spawn context)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole process group: the server decides
    if options.nice and hasattr(os, "nice"):
        os.nice(options.nice)
    logging.basicConfig(level=options.log_level, format=f"%(asctime)s %(levelname)s [worker {device}] %(message)s")
    # An empty working folder: a Hub id such as "etc/passwd" can never be read as a relative path.
    with tempfile.TemporaryDirectory(prefix="distill3d-worker-", ignore_cleanup_errors=True) as empty:
        os.chdir(empty)
        JobProcess(device, options, commands, events).serve()
        os.chdir(Path(empty).parent)
