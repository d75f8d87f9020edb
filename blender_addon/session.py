"""What the add-on knows about the backend and its jobs, kept up to date without ever waiting.

Plain Python, no Blender data: `tick()` is called from Blender's timer (or from the blocking scripted
loop) on the main thread. It runs the callbacks of finished requests (`RequestThread`), reads the event
stream (`Client.poll_events`, non-blocking) and checks on the backend every few seconds. What the
Blender side must do with the news (show a preview, update the live mesh, import a result) comes back
as an `Updates`, newest-only per job, so a burst of events costs one image update, not ten.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .connection import Connection, connect
from .shared.client import Client, ClientError, ServerUnreachable, VersionMismatch
from .request_thread import RequestThread
from .shared import results
from .shared.protocol import ACTIVE_STATES, DONE, FAILED, FINAL_STATES, PREVIEW_NAME, QUEUED, RUNNING

# How often the backend is asked how it is (seconds): often while a job runs, so a killed backend
# or a missed event is noticed quickly; rarely when idle.
PROBE_ACTIVE_S = 1.0
PROBE_IDLE_S = 3.0
PROBE_DOWN_S = 2.0
HISTORY_ROWS = 8  # the newest jobs the panel lists, each with a thumbnail of its preview


@dataclass
class Job:
    job_id: str
    prompt: str
    request: dict[str, Any] = field(default_factory=dict)
    state: str = QUEUED
    step: int = 0
    total: int = 0
    it_per_s: float = 0.0
    eta_s: float | None = None
    message: str = ""          # the backend's message (why it failed, or its last log line)
    outputs: list[str] = field(default_factory=list)
    slot: int = 0              # index among the variations submitted together: placed side by side
    variations: int = 1        # how many were submitted together
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the 3D cursor when it was started
    size: float = 1.0          # metres across in the scene (placement.py)
    auto_import: bool = True   # import the mesh when done (jobs started here; history re-imports)
    fetching: bool = False
    imported: bool = False
    import_error: str = ""     # why the result could not be fetched or imported
    lost_contact: bool = False  # the backend stopped answering while this job was running
    image_name: str = ""       # Blender data made for this job (set by the Blender side)
    proxy_name: str = ""
    object_names: list[str] = field(default_factory=list)
    source: str = "new"        # the request's source: "new", or "texture" / "shape" of the selection
    selection: Any = None      # what the Blender side needs to put the result on the selection
    result_names: tuple[str, ...] = (results.MESH,)  # the result files to fetch when done

    @property
    def finished(self) -> bool:
        """Nothing more will happen: a terminal state, and the import done or not wanted."""
        return self.state in FINAL_STATES and (self.state != DONE or not self.auto_import
                                           or self.imported or bool(self.import_error))

    @property
    def progress(self) -> float:
        return self.step / self.total if self.total else 0.0


@dataclass
class Updates:
    previews: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> latest preview event
    meshes: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> latest mesh event
    results: list[tuple[Job, dict[str, bytes]]] = field(default_factory=list)  # (job, its result_names' bytes)
    thumbnails: dict[str, bytes] = field(default_factory=dict)       # job id -> preview.png of a history job
    changed: bool = False                                            # the panel needs a redraw

    def __bool__(self) -> bool:
        return bool(self.previews or self.meshes or self.results or self.thumbnails or self.changed)


class Session:
    def __init__(self, connection: Connection):
        self.connection = connection
        self.address = connection.address
        self.timeout_s = connection.timeout_s
        self.thread = RequestThread(connection)  # every request/reply call goes through it
        self.events: Client | None = None   # main-thread client, used only for the event stream
        self.backend = "unknown"             # unknown | ok | unreachable | mismatch | error
        self.backend_message = ""
        self.backend_field: str | None = None  # "keys" when the backend refused this client's keys
        self.info: dict[str, Any] = {}
        self.jobs: dict[str, Job] = {}       # jobs started or re-imported from this Blender session
        self.history: list[dict[str, Any]] = []
        self.thumbnails_asked: set[str] = set()  # history jobs whose preview was fetched (or is being)
        self.last_error = ""                 # the last failed request (submit, cancel, fetch...)
        self._updates = Updates()
        self._probing = False
        self._next_probe = 0.0

    # ----- called from the main thread ---------------------------------------------------------

    def tick(self, max_events: int = 200) -> Updates:
        """Everything that happened since the last tick. Never waits."""
        self.thread.drain()
        if self.events is not None:
            for event in self.events.poll_events(max_events=max_events):
                self._on_event(event)
        now = time.monotonic()
        if not self._probing and now >= self._next_probe:
            self._probe()
        updates, self._updates = self._updates, Updates()
        return updates

    @property
    def active_jobs(self) -> list[Job]:
        return [job for job in self.jobs.values() if job.state in ACTIVE_STATES]

    @property
    def busy(self) -> bool:
        """True while there is something to follow closely (the timer then ticks fast)."""
        return bool(self.active_jobs) or any(j.fetching for j in self.jobs.values()) or self.thread.busy

    def probe_now(self) -> None:
        """Ask how the backend is at the next tick (after Start backend, or a Refresh click)."""
        self._next_probe = 0.0

    def submit(self, requests: list[dict[str, Any]], origin=(0.0, 0.0, 0.0), size: float = 1.0,
               on_submitted: Callable[[list[Job], str], None] | None = None, mesh: dict | None = None,
               selection: Any = None, result_names: tuple[str, ...] = (results.MESH,)) -> None:
        """Start one job per request; variations submitted together are placed side by side. `mesh`:
        the selection's buffers (Client.submit), sent with each request; `selection` and `result_names`
        are kept on the jobs for the Blender side.

        `on_submitted(jobs, error)` runs once all answers are in (error is "" when all went through).
        """
        answers: list[Job] = []
        errors: list[str] = []

        def one(request: dict[str, Any], slot: int) -> None:
            def done(job_id: str | None, error: Exception | None) -> None:
                if error is not None:
                    errors.append(self._note_error(error, f"could not start \"{request.get('prompt', '')}\""))
                else:
                    job = Job(job_id=job_id, prompt=request.get("prompt", ""), request=dict(request), slot=slot,
                              variations=len(requests), origin=tuple(origin), size=size,
                              source=request.get("source", "new"), selection=selection,
                              result_names=tuple(result_names))
                    self.jobs[job_id] = job
                    answers.append(job)
                    self.last_error = ""  # an older error is stale once a job went through
                    self._changed()
                if len(answers) + len(errors) == len(requests) and on_submitted is not None:
                    on_submitted(sorted(answers, key=lambda j: j.slot), "; ".join(errors))
            self.thread.call(Client.submit, request, mesh, on_done=done)

        self._ensure_events()
        for i, request in enumerate(requests):
            one(request, i)
        self._next_probe = min(self._next_probe, time.monotonic() + PROBE_ACTIVE_S)

    def cancel(self, job_id: str) -> None:
        def done(status: dict | None, error: Exception | None) -> None:
            if error is not None:
                self._note_error(error, "could not cancel the job")
            elif status:
                self._on_status(status)
        self.thread.call(Client.cancel, job_id, on_done=done)

    def reimport(self, status: dict[str, Any], origin=(0.0, 0.0, 0.0), size: float = 1.0) -> Job:
        """Fetch and import the mesh of a finished job from the history, as a new object (a textured
        selection's mesh.glb too: its geometry with the baked texture)."""
        job_id = status["job_id"]
        job = self.jobs.get(job_id)
        if job is None:
            job = Job(job_id=job_id, prompt=_prompt_of(status), request=dict(status.get("request") or {}))
            self.jobs[job_id] = job
        job.origin, job.size = tuple(origin), size
        job.source, job.selection, job.result_names = "new", None, (results.MESH,)  # a new object at the cursor
        job.state, job.auto_import, job.imported, job.import_error = status.get("state", DONE), True, False, ""
        self._fetch_result(job)
        return job

    def refresh_history(self) -> None:
        def done(jobs: list | None, error: Exception | None) -> None:
            if error is None:
                self.history = list(jobs or [])
                self._fetch_thumbnails()
                self._changed()
        self.thread.call(Client.jobs, on_done=done)

    def thumbnail_of(self, job_id: str) -> str:
        """The image name of a history job's thumbnail: its live preview if it ran here ("" if none)."""
        job = self.jobs.get(job_id)
        return job.image_name if job is not None and job.image_name else ""

    def close(self) -> None:
        """Close every socket and stop the request thread. Safe to call twice."""
        self.thread.close()
        if self.events is not None:
            self.events.close()
            self.events = None

    # ----- internals ---------------------------------------------------------------------------

    def _changed(self) -> None:
        self._updates.changed = True

    def _note_error(self, error: Exception, doing: str) -> str:
        if isinstance(error, (ServerUnreachable, VersionMismatch)):
            self._set_backend(error)
        text = f"{doing}: {error}"
        self.last_error = text
        self._changed()
        return text

    def _set_backend(self, error: Exception | None, info: dict | None = None) -> None:
        was = self.backend
        if error is None:
            self.backend, self.backend_message, self.backend_field, self.info = "ok", "", None, info or {}
            for job in self.jobs.values():
                job.lost_contact = False
            if was != "ok":  # (re)connected: catch up with what happened meanwhile
                self.last_error = ""
                self._ensure_events()
                self.refresh_history()
        else:
            self.backend = ("unreachable" if isinstance(error, ServerUnreachable) else
                            "mismatch" if isinstance(error, VersionMismatch) else "error")
            self.backend_message, self.backend_field = str(error), getattr(error, "field", None)
            for job in self.active_jobs:
                job.lost_contact = True
        if self.backend != was:
            self._changed()

    def _ensure_events(self) -> None:
        try:
            if self.events is None:
                self.events = connect(self.connection)
            self.events.subscribe(None)  # all jobs: variations and re-imports share one stream
        except ClientError as error:  # e.g. a malformed address in the preferences
            self._set_backend(error)

    def _probe(self) -> None:
        """Ask the backend how it is, then how our running jobs are (catches missed events). The
        status requests go out only once the backend answered, so a dead backend costs one timeout."""
        self._probing = True

        def finish() -> None:
            self._probing = False
            delay = PROBE_DOWN_S if self.backend != "ok" else PROBE_ACTIVE_S if self.busy else PROBE_IDLE_S
            self._next_probe = time.monotonic() + delay

        def on_info(info: dict | None, error: Exception | None) -> None:
            self._set_backend(error, info)
            active = [job.job_id for job in self.active_jobs] if error is None else []
            if not active:
                finish()
            for i, job_id in enumerate(active):
                self.thread.call(Client.status, job_id, on_done=on_status(job_id, i == len(active) - 1))

        def on_status(job_id: str, last: bool):
            def done(status: dict | None, error: Exception | None) -> None:
                if isinstance(error, (ServerUnreachable, VersionMismatch)):
                    self._set_backend(error)
                elif error is not None:  # e.g. the backend no longer knows the job (other data folder)
                    self._set_state(self.jobs[job_id], FAILED, str(error))
                elif status:
                    self._on_status(status)
                if last:
                    finish()
            return done

        self.thread.call(Client.info, on_done=on_info)

    def _on_status(self, status: dict[str, Any]) -> None:
        job = self.jobs.get(status.get("job_id"))
        if job is None:
            return
        job.step = int(status.get("step", job.step) or 0)
        job.total = int(status.get("total", job.total) or 0)
        job.outputs = list(status.get("outputs") or job.outputs)
        self._set_state(job, status.get("state", job.state), status.get("message") or "")

    def _set_state(self, job: Job, state: str, message: str) -> None:
        if state == job.state and (not message or message == job.message):
            return
        job.state = state
        if message:
            job.message = message
        self._changed()
        if state in FINAL_STATES:
            job.eta_s = None
            self.refresh_history()
            if state == DONE and job.auto_import:
                self._fetch_result(job)

    def _fetch_thumbnails(self) -> None:
        """Fetch the preview of each finished history job shown, once; jobs run here have theirs."""
        for status in self.history[:HISTORY_ROWS]:
            job_id = status.get("job_id", "")
            if (status.get("state") != DONE or not status.get("has_preview") or job_id in self.thumbnails_asked
                    or self.thumbnail_of(job_id)):
                continue
            self.thumbnails_asked.add(job_id)

            def done(png: bytes | None, error: Exception | None, job_id: str = job_id) -> None:
                if error is None and png:  # no thumbnail is no reason to bother the user
                    self._updates.thumbnails[job_id] = png
                    self._changed()
            self.thread.call(Client.fetch, job_id, PREVIEW_NAME, on_done=done)

    def _fetch_result(self, job: Job) -> None:
        """Fetch the job's result_names, one request each; once all are in, they go to the Blender side."""
        if job.fetching or job.imported:
            return
        job.fetching = True
        files: dict[str, bytes] = {}

        def fetched(name: str):
            def done(data: bytes | None, error: Exception | None) -> None:
                if not job.fetching:  # an earlier file failed: the result is already given up
                    return
                if error is not None:
                    job.fetching = False
                    job.import_error = self._note_error(error, f"could not fetch {name} of \"{job.prompt}\"")
                    self._changed()
                    return
                files[name] = data
                if len(files) == len(job.result_names):
                    job.fetching = False
                    self._updates.results.append((job, files))
                    self._changed()
            return done
        for name in job.result_names:
            self.thread.call(Client.fetch, job.job_id, name, on_done=fetched(name))

    def _on_event(self, event: dict[str, Any]) -> None:
        job = self.jobs.get(event.get("job_id"))
        kind = event.get("type")
        if job is None:
            if kind == "state" and event.get("state") in FINAL_STATES:
                self.refresh_history()  # someone else's job (a script, another Blender) finished
            return
        if kind == "progress":
            job.step, job.total = int(event.get("step", 0)), int(event.get("total", job.total))
            job.it_per_s = float(event.get("it_per_s") or 0.0)
            job.eta_s = event.get("eta_s")
            if job.state == QUEUED:
                job.state = RUNNING
            self._changed()
        elif kind == "preview" and event.get("png"):
            self._updates.previews[job.job_id] = event
            self._changed()
        elif kind == "mesh":
            self._updates.meshes[job.job_id] = event
        elif kind == "state":
            self._set_state(job, event.get("state", job.state), event.get("message") or "")
        elif kind == "log":
            if event.get("level") in ("warning", "error"):
                job.message = str(event.get("message", ""))
                self._changed()
        elif kind == "result":
            job.outputs = list(event.get("outputs") or [])
            self._set_state(job, DONE, "")


def _prompt_of(status: dict[str, Any]) -> str:
    return str((status.get("request") or {}).get("prompt") or status.get("prompt") or status.get("job_id", ""))
