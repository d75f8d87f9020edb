"""Jobs on disk: data-dir/jobs/<job_id>/ holds request.json, status.json, the checkpoint, the latest
preview (preview.png) and the result files.

Every write is atomic (a temp file renamed over the old one), so a crash never leaves half a status.
A status write that fails (a full or read-only disk) never stops the caller: the status stays current
in memory and is written again by retry_unsaved() once the disk takes it. Job folders and the files
read or served must be real folders and files inside the data folder (datadir.py): a symbolic link
is never followed out.
On start, a job that was running when the server died is queued again to resume from its checkpoint
(or failed with the reason, after MAX_ATTEMPTS deaths); finished jobs and their results stay.
"""
from __future__ import annotations

import json
import logging
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

from shared.protocol import (FAILED, FILE_NAME_PATTERN, FINAL_STATES, JOB_ID_PATTERN, JOB_STATES, PREVIEW_NAME, QUEUED,
                             RUNNING, ProtocolError)
from shared.results import CHECKPOINT

from ..fileio import write_atomic
from .datadir import is_real_dir, is_real_file_inside, open_inside, read_inside, write_problem

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3          # a job that took the server down this often is not retried again
PERSIST_EVERY_S = 2.0     # progress reaches status.json at most this often (state changes: always)


def _write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=1, allow_nan=False).encode())


@dataclass
class Job:
    job_id: str
    folder: Path
    request: dict[str, Any]       # the checked request as the client sent it (request.json)
    status: dict[str, Any]        # what status.json holds
    config: Any = None            # the GenerateConfig it runs with, placed (requests.py); None until built
    cancel: threading.Event = field(default_factory=threading.Event)
    persisted_at: float = 0.0
    unsaved: bool = False         # the last status write failed; retry_unsaved() tries again

    @property
    def state(self) -> str:
        return self.status["state"]

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT


class JobStore:
    """All jobs of one data dir, in memory and on disk. Thread-safe. `on_state(job)` is called after
    every state change (the server publishes it)."""

    def __init__(self, data_dir: Path, on_state: Callable[[Job], None] = lambda job: None):
        root = Path(data_dir) / "jobs"
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()  # the operator's choice of folder; inside it no link is followed
        self.on_state = on_state
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()

    # -- startup ----------------------------------------------------------------------------------

    def load(self) -> list[Job]:
        """Read every job folder; return the jobs to queue, oldest first. Jobs that were running
        are queued again (resume from checkpoint) or failed with the reason."""
        with self._lock:
            for folder in sorted(self.root.iterdir()):
                if not JOB_ID_PATTERN.fullmatch(folder.name):
                    continue
                if not is_real_dir(folder):
                    log.warning("%s is a symbolic link or not a folder: ignored (job folders must be real folders "
                                "inside the data folder)", folder)
                    continue
                job = self._read(folder)
                self._jobs[job.job_id] = job
                if job.state == RUNNING:
                    self._recover(job)
            queued = [job for job in self._jobs.values() if job.state == QUEUED]
        return sorted(queued, key=lambda job: job.status.get("created", 0.0))

    def _read(self, folder: Path) -> Job:
        request = _read_json(folder, "request.json")
        status = _read_json(folder, "status.json")
        job = Job(folder.name, folder, request if isinstance(request, dict) else {},
                  status if isinstance(status, dict) else {})
        if not isinstance(request, dict):
            self._damaged(job, "request.json is missing or damaged, so the job cannot run: submit it again")
        elif not isinstance(status, dict) or status.get("state") not in JOB_STATES:
            self._damaged(job, "status.json is missing or damaged, so the job's progress is unknown: "
                               "submit it again")
        return job

    def _damaged(self, job: Job, message: str) -> None:
        job.status = {**_new_status(job.job_id, job.request, {}, "unknown"), **job.status,
                      "state": FAILED, "message": message, "finished": time.time()}
        job.status.setdefault("outputs", {})
        self._persist(job)
        log.warning("job %s: %s", job.job_id, message)

    def _recover(self, job: Job) -> None:
        attempts = int(job.status.get("attempts", 0))
        if attempts >= MAX_ATTEMPTS:
            message = (f"the backend stopped {attempts} times while running this job (a crash, running out of "
                       "memory, or being killed), so it is not retried: submit it again with a lower resolution "
                       "or fewer steps")
            self.update(job, state=FAILED, message=message, finished=time.time())
        elif is_real_file_inside(job.folder, CHECKPOINT):
            self.update(job, state=QUEUED, message="the backend restarted: the job resumes from its last checkpoint")
        else:
            self.update(job, state=QUEUED, message="the backend restarted before the first checkpoint: "
                                                     "the job starts again from the beginning")

    # -- access -----------------------------------------------------------------------------------

    def create(self, request: dict[str, Any], config: dict[str, Any], device: str,
               files: dict[str, bytes] | None = None) -> Job:
        """A new queued job on disk, with `files` (name -> bytes, e.g. an uploaded mesh) written into its
        folder before its request. OSError if the data folder cannot take it (nothing is left behind)."""
        with self._lock:
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            while job_id in self._jobs:
                job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            folder = self.root / job_id
            folder.mkdir()
            job = Job(job_id, folder, request, _new_status(job_id, request, config, device))
            try:
                for name, data in (files or {}).items():
                    write_atomic(folder / name, data)
                _write_json(folder / "request.json", request)
                _write_json(folder / "status.json", job.status)
            except OSError:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            job.persisted_at = time.monotonic()
            self._jobs[job_id] = job
            return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise ProtocolError(f"no job {job_id} on this backend: list the jobs to see their ids", "job_id",
                                "not_found")
        return job

    def newest_first(self, limit: int) -> list[Job]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda job: (job.status.get("created", 0.0), job.job_id),
                          reverse=True)
        return jobs[:limit]

    def update(self, job: Job, persist: bool = True, **changes: Any) -> None:
        """Change a job's status. With persist=False only memory changes, unless the last write is
        older than PERSIST_EVERY_S (so a restart shows a recent step)."""
        with self._lock:
            state_changed = "state" in changes and changes["state"] != job.status.get("state")
            job.status.update(changes)
            now = time.monotonic()
            if persist or state_changed or now - job.persisted_at > PERSIST_EVERY_S:
                job.persisted_at = now
                self._persist(job)
        if state_changed:
            self.on_state(job)

    def _persist(self, job: Job) -> None:
        """Write status.json; on failure keep the status in memory for retry_unsaved(). Never raises."""
        if not is_real_dir(job.folder):  # swapped for a link (or removed): never write through it
            log.error("job %s: %s is no longer a real folder; its status is not written", job.job_id, job.folder)
            job.unsaved = False
            return
        try:
            _write_json(job.folder / "status.json", job.status)
            job.unsaved = False
        except OSError as error:
            if not job.unsaved:
                log.error("job %s: status not saved (%s); retrying until the data folder takes it", job.job_id,
                          write_problem(error))
            job.unsaved = True

    def retry_unsaved(self) -> None:
        """Write the statuses whose last write failed (called now and then by the server)."""
        with self._lock:
            for job in [job for job in self._jobs.values() if job.unsaved]:
                self._persist(job)

    def public(self, job: Job) -> dict[str, Any]:
        """The status a client sees: outputs as names, plus whether a preview can be fetched."""
        with self._lock:
            status = dict(job.status)
        status["outputs"] = sorted(status.get("outputs", {}))
        status["request"] = job.request
        status["has_preview"] = is_real_file_inside(job.folder, PREVIEW_NAME)
        status["cancel_requested"] = job.cancel.is_set() and status["state"] not in FINAL_STATES
        return status

    def open_result(self, job: Job, name: str) -> tuple[BinaryIO, Path]:
        """The open file behind a result name, and its path; only the job's recorded outputs and its
        preview qualify, and each must be a real file inside the job's folder (no link on the way)."""
        with self._lock:
            outputs = dict(job.status.get("outputs", {}))
        relative = PREVIEW_NAME if name == PREVIEW_NAME else outputs.get(name)
        try:
            if relative is None:
                raise FileNotFoundError(name)
            return open_inside(job.folder, relative), job.folder / relative
        except OSError:
            names = ", ".join(sorted(outputs)) or "none yet"
            raise ProtocolError(f"job {job.job_id} has no result {name!r}: its results are {names} "
                                f"({PREVIEW_NAME} once a preview exists)", "name", "not_found") from None

    def record_outputs(self, job: Job, outputs: dict[str, Any]) -> dict[str, str]:
        """name -> path relative to the job folder, for the outputs that are real files inside it."""
        kept = {}
        for name, path in outputs.items():
            path = Path(path)
            relative = path.relative_to(job.folder) if path.is_relative_to(job.folder) else path
            if (FILE_NAME_PATTERN.fullmatch(str(name)) and not relative.is_absolute()
                    and is_real_file_inside(job.folder, relative)):
                kept[str(name)] = relative.as_posix()
            else:
                log.warning("job %s: output %s at %s is outside the job folder, missing or badly named; not served",
                            job.job_id, name, path)
        return kept


def _new_status(job_id: str, request: dict, config: dict, device: str) -> dict[str, Any]:
    return {"job_id": job_id, "state": QUEUED, "step": 0, "total": config.get("steps", 0), "message": "",
            "outputs": {}, "created": time.time(), "started": None, "finished": None, "attempts": 0,
            "device": device, "preview_step": None, "config": config}


def _read_json(folder: Path, name: str) -> Any:
    data = read_inside(folder, name)
    try:
        return None if data is None else json.loads(data.decode("utf-8"))
    except ValueError:
        return None
