"""The backend server: a ROUTER socket for commands (info, submit, cancel, status, jobs, fetch) and a
PUB socket, on the next port, for events. One loop on one thread owns both sockets and never waits
on training: jobs run in one job process per device (backend/runner/process_executor.py), driven by
one DeviceThread per device here (device_thread.py), whose events come back through inproc sockets
(publish.py) and are forwarded to subscribers. Every request is checked once at the protocol
boundary (shared.protocol), and a submit's settings become one GenerateConfig there (requests.py);
anything malformed gets an error reply naming the field, and the loop goes on. docs/server.md
describes the process model.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import zmq

from shared.protocol import (CANCELLED, DEFAULT_HOST, DEFAULT_PORT, FAILED, FINAL_STATES, HARD_FRAME_LIMIT,
                             MAX_MESH_BYTES, MAX_MESH_FACES, MAX_REPLY_BYTES, MAX_REQUEST_BYTES, MAX_REQUEST_FRAMES,
                             PRESETS, ProtocolError, check_version, decode_mesh, pack, parse_header, validate_command,
                             validate_request)
from shared.version import PROTOCOL_VERSION, __version__

from ..errors import UserError
from ..runner.executor import JobExecutor
from ..runner.failures import write_problem
from ..runner.job_runner import RunnerOptions, TrainFn
from ..runner.prior_cache import Loader
from ..runner.process_executor import ProcessExecutor
from .datadir import check_writable, is_real_file_inside
from .defaults import MAX_QUEUED, WORKER_NICE
from .device_thread import DeviceThread, RunSettings
from .jobs import Job, JobStore
from .models import ModelRoots
from .publish import EventBus
from .requests import config_from_request, default_device, placed, queue_device
from .security import ServerKeys, check_bind, secure_socket, start_authenticator
from .uploads import SOURCE_MESH_NAME, mesh_arrays, npz_bytes, warm_up

log = logging.getLogger(__name__)

EVENT_HWM = 200          # events queued per subscriber; a slow client loses old ones, the server stays small
POLL_MS = 100            # how often the loop looks at the stop flag
SHUTDOWN_WAIT_S = 60.0   # how long a stopping server waits for the running job to checkpoint
RETRY_SAVE_S = 1.0       # how often statuses a full disk refused are written again


class Server:
    def __init__(self, data_dir: str | Path = "results/server", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 device: str = "auto", *, keys: ServerKeys | None = None, train_fn: TrainFn | None = None,
                 prior_loader: Loader | None = None, max_priors: int = 2, coarse_mesh_every: int = 100,
                 preview_interval_s: float = 0.5, progress_interval_s: float = 0.1, event_hwm: int = EVENT_HWM,
                 model_roots: list[str | Path] = (), max_queued: int = MAX_QUEUED,
                 executor_factory: Callable[[str], JobExecutor] | None = None,
                 worker_nice: int = WORKER_NICE):
        """port=0 picks a free pair of ports (commands, events = commands + 1); see .port after start.
        train_fn and prior_loader (tests, benchmarks) run in the worker processes, so they must be
        picklable: module-level functions, functools.partial of them, or instances of module-level
        classes. executor_factory(device) -> JobExecutor replaces the job processes altogether."""
        self.data_dir, self.host, self.port, self.keys = Path(data_dir).absolute(), host, port, keys
        self.event_hwm, self.max_queued = event_hwm, max_queued
        self._device_choice = device
        self.models = ModelRoots(model_roots)
        options = RunnerOptions(train_fn, prior_loader, max_priors, logging.getLogger().getEffectiveLevel(),
                                worker_nice)
        self._executor_factory = executor_factory or (lambda device: ProcessExecutor(device, options))
        self._run_options = dict(coarse_mesh_every=coarse_mesh_every, preview_interval_s=preview_interval_s,
                                 progress_interval_s=progress_interval_s)
        self._stop = threading.Event()
        self._devices: dict[str, DeviceThread] = {}
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the sockets, recover jobs from disk and start their workers. Raises UserError when
        the address is refused or taken. The thread that calls start() must run serve_forever()."""
        check_bind(self.host, self.keys)
        self.device = default_device(self._device_choice)
        check_writable(self.data_dir)
        self._context = zmq.Context()
        try:
            self._authenticator = start_authenticator(self._context, self.keys)
            self._commands = self._socket(zmq.ROUTER)
            self._commands.setsockopt(zmq.MAXMSGSIZE, HARD_FRAME_LIMIT)
            self._events = self._socket(zmq.PUB)
            self._events.sndhwm = self.event_hwm
            self._bind_ports()
            self._inbox = self._context.socket(zmq.PULL)
            self._inbox.linger = 0
            self._inbox.bind(f"inproc://distill3d-events-{id(self)}")
        except BaseException:
            self._close_sockets()
            raise
        # The first mesh upload would otherwise import the mesh checks (and torch with them) on this
        # loop's thread, for seconds: start that import now, on the side.
        threading.Thread(target=warm_up, name="distill3d-warm-up", daemon=True).start()
        self.bus = EventBus(self._context, f"inproc://distill3d-events-{id(self)}")
        self.store = JobStore(self.data_dir, on_state=self._announce_state)
        self.settings = RunSettings(self.device, **self._run_options)
        for job in self.store.load():
            if self._rebuild_config(job):
                self._device_thread(job.config.device).enqueue(job)
        self._started = True
        log.info("Distill3D backend %s listening on %s (events on port %d), data in %s, device %s", __version__,
                 self.address, self.port + 1, self.data_dir, self.device)

    @property
    def address(self) -> str:
        return f"tcp://{_host_for_url(self.host)}:{self.port}"

    def serve_forever(self) -> None:
        """Answer commands and forward events until stop() is called; then shut down cleanly."""
        poller = zmq.Poller()
        poller.register(self._commands, zmq.POLLIN)
        poller.register(self._inbox, zmq.POLLIN)
        next_retry = time.monotonic() + RETRY_SAVE_S
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(POLL_MS))
                if time.monotonic() > next_retry:
                    self.store.retry_unsaved()
                    next_retry = time.monotonic() + RETRY_SAVE_S
                if self._inbox in ready:
                    self._forward_events()
                if self._commands in ready:
                    for _ in range(32):  # then look at events again
                        try:
                            frames = self._commands.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._answer(frames)
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask serve_forever to return (from any thread or a signal handler)."""
        self._stop.set()

    def run_in_thread(self) -> threading.Thread:
        """start() and serve_forever() on a new thread; returns once listening (start errors re-raised)."""
        ready, failure = threading.Event(), []

        def main() -> None:
            try:
                self.start()
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                failure.append(error)
                return
            finally:
                ready.set()
            self.serve_forever()

        thread = threading.Thread(target=main, name="distill3d-server", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return thread

    def job_process_pids(self) -> dict[str, int | None]:
        """device -> the process id of its job process (None before its first job or after it died)."""
        return {device: getattr(thread.executor, "pid", None) for device, thread in self._devices.items()}

    def _shutdown(self) -> None:
        for thread in self._devices.values():
            thread.stop()  # the running job checkpoints and goes back to "queued"
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        for thread in self._devices.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread in self._devices.values():
            if thread.is_alive():  # its job did not stop in time: end the process; the job resumes next start
                thread.executor.close(wait_s=0.0)
                thread.join(10)
        self._forward_events()
        if any(thread.is_alive() for thread in self._devices.values()):
            # A step that will not end: leave its thread and sockets to the process exit (closing a socket
            # another thread still uses is unsafe). The job stays "running" on disk and resumes next start.
            log.warning("a job did not stop within %.0f s; exiting without it (it resumes from its last "
                        "checkpoint at the next start)", SHUTDOWN_WAIT_S)
            return
        self.bus.close()
        self._close_sockets()
        log.info("Distill3D backend stopped")

    def _close_sockets(self) -> None:
        for name in ("_commands", "_events", "_inbox"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=0)
        if getattr(self, "_authenticator", None) is not None:
            self._authenticator.stop()
        self._context.term()

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self._context.socket(kind)
        sock.linger = 0
        sock.ipv6 = ":" in self.host
        secure_socket(sock, self.keys)
        return sock

    def _bind_ports(self) -> None:
        base = f"tcp://{_host_for_url(self.host)}"
        if self.port:
            for sock, port in ((self._commands, self.port), (self._events, self.port + 1)):
                try:
                    sock.bind(f"{base}:{port}")
                except zmq.ZMQError as error:
                    raise UserError(f"cannot listen on {base}:{port} ({error}): is another backend running? Stop it "
                                    "or choose another --port (events use the next port too)") from None
            return
        for _ in range(100):  # port 0: a free pair of neighbouring ports
            port = self._commands.bind_to_random_port(base, min_port=20000, max_port=60000)
            try:
                self._events.bind(f"{base}:{port + 1}")
                self.port = port
                return
            except zmq.ZMQError:
                self._commands.unbind(self._commands.last_endpoint)
        raise UserError(f"found no free pair of ports on {self.host}: pass --port")

    # -- workers and events -----------------------------------------------------------------------

    def _device_thread(self, device: str) -> DeviceThread:
        device = queue_device(device, self.device)
        if device not in self._devices:
            self._devices[device] = DeviceThread(device, self._executor_factory(device), self.store, self.bus,
                                                 self.settings)
            self._devices[device].start()
        return self._devices[device]

    def _rebuild_config(self, job: Job) -> bool:
        """A stored request.json is a boundary too: when the server restarts, a queued job's config is
        built from it once (as at submit), or the job fails with the reason. True if the job can run."""
        try:
            upload = SOURCE_MESH_NAME if is_real_file_inside(job.folder, SOURCE_MESH_NAME) else None
            config = config_from_request(validate_request(job.request), job.status.get("device") or self.device,
                                         self.settings.coarse_mesh_every, upload)
            job.config = placed(config, job.folder, self.models.resolve(config.prior))
        except ProtocolError as error:  # this backend no longer accepts it (a model root, a device gone)
            self.store.update(job, state=FAILED, message=f"this job's request is no longer valid ({error}): "
                              "resubmit the job", finished=time.time(), error_type="ProtocolError",
                              **({"field": error.field} if error.field else {}))
            return False
        return True

    def _announce_state(self, job: Job) -> None:
        status = job.status
        self.bus.publish(job.job_id, "state", {"state": status["state"], "message": status.get("message", ""),
                                               "step": status.get("step", 0), "total": status.get("total", 0)})

    def _forward_events(self) -> None:
        for _ in range(1000):
            try:
                frames = self._inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._events.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                pass  # PUB drops for slow subscribers by itself; this is belt and braces

    # -- commands ---------------------------------------------------------------------------------

    def _answer(self, frames: list[bytes]) -> None:
        """Reply to one request, whatever it holds. Framing: [identity, (b"",) header, ...]."""
        envelope, body = frames[:1], frames[1:]
        if body and body[0] == b"":  # a REQ socket, or our DEALER client, sends an empty delimiter
            envelope, body = frames[:2], frames[2:]
        request_id = None
        try:
            if not body:
                raise ProtocolError("the request has no header frame: send a JSON header", "header")
            if (len(body) > MAX_REQUEST_FRAMES or len(body[0]) > MAX_REQUEST_BYTES
                    or sum(len(frame) for frame in body[1:]) > MAX_MESH_BYTES):
                raise ProtocolError(f"the request is larger than {MAX_REQUEST_BYTES} bytes of header, "
                                    f"{MAX_REQUEST_FRAMES} frames or a {MAX_MESH_FACES:,}-triangle mesh: requests "
                                    "carry settings and at most one mesh", None, "too_large")
            header = parse_header(body[0])
            request_id = header.get("id") if type(header.get("id")) is int and 0 <= header["id"] < 2**63 else None
            check_version(header.get("v"), sender="client")
            cmd, args = validate_command(header)
            if cmd == "submit":  # the only command with binary frames: a mesh's buffers
                args["frames"] = body[1:]
            result, binary = getattr(self, f"_cmd_{cmd}")(**args)
            reply = pack({"id": request_id, "ok": True, "result": result}, *binary)
        except ProtocolError as error:
            reply = pack({"id": request_id, "ok": False, "error": error.to_dict()})
        except Exception as error:  # noqa: BLE001 - the server must survive any input
            log.exception("error while answering a request")
            reply = pack({"id": request_id, "ok": False, "error": ProtocolError(
                f"the backend failed to answer ({type(error).__name__}: {error}); see its log", None,
                "internal").to_dict()})
        try:
            self._commands.send_multipart(envelope + reply, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone

    def _cmd_info(self) -> tuple[dict, list]:
        return {"version": __version__, "protocol": PROTOCOL_VERSION, "device": self.device,
                "devices": _devices(), "presets": list(PRESETS),
                "loaded_priors": [prior for t in self._devices.values() for prior in t.executor.loaded_priors],
                "event_port": self.port + 1,
                "running": [job.job_id for job in (t.current for t in self._devices.values()) if job is not None],
                "queued": sum(t.queued() for t in self._devices.values())}, []

    def _cmd_submit(self, request: dict[str, Any], mesh: dict[str, Any] | None = None,
                    frames: list[bytes] = ()) -> tuple[dict, list]:
        fields = request  # checked by validate_command (shared.protocol COMMANDS["submit"])
        upload = decode_mesh(mesh, list(frames))
        files = {} if upload is None else {SOURCE_MESH_NAME: npz_bytes(mesh_arrays(upload))}
        config = config_from_request(fields, self.device, self.settings.coarse_mesh_every,
                                     SOURCE_MESH_NAME if files else None)  # the one GenerateConfig of this job
        prior = self.models.resolve(config.prior)
        waiting = sum(t.queued() for t in self._devices.values())
        if waiting >= self.max_queued:
            raise ProtocolError(f"the backend's queue is full ({waiting} jobs waiting): wait for some to finish or "
                                "cancel queued ones, then submit again", "queue", "unavailable")
        try:
            job = self.store.create(fields, config.to_dict(), config.device, files)
        except OSError as error:
            raise ProtocolError(f"{write_problem(error)}, so it cannot take the job: submit it again once the "
                                "backend's operator has freed space or fixed the folder", "data_dir",
                                "unavailable") from None
        job.config = placed(config, job.folder, prior)
        self._device_thread(config.device).enqueue(job)
        self._announce_state(job)
        log.info("job %s queued on %s: %r", job.job_id, config.device, config.prompt)
        return self.store.public(job), []

    def _cmd_cancel(self, job_id: str) -> tuple[dict, list]:
        job = self.store.get(job_id)
        if job.state not in FINAL_STATES:
            job.cancel.set()  # a running job stops at its next step
            thread = self._devices.get(queue_device(job.status.get("device") or self.device, self.device))
            if thread is not None and thread.remove(job):
                self.store.update(job, state=CANCELLED, message="cancelled before it started",
                                  finished=time.time())
            elif thread is not None:
                thread.cancel(job)
        return self.store.public(job), []

    def _cmd_status(self, job_id: str) -> tuple[dict, list]:
        return self.store.public(self.store.get(job_id)), []

    def _cmd_jobs(self, limit: int = 100) -> tuple[list, list]:
        return [self.store.public(job) for job in self.store.newest_first(limit)], []

    def _cmd_fetch(self, job_id: str, name: str) -> tuple[dict, list]:
        handle, path = self.store.open_result(self.store.get(job_id), name)
        with handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_REPLY_BYTES:
                raise ProtocolError(f"{name} is {size} bytes, over the {MAX_REPLY_BYTES}-byte reply limit: copy it "
                                    f"from {path} on the backend machine", "name", "too_large")
            data = handle.read()
        return {"name": name, "size": len(data)}, [data]


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


_DEVICES: list[str] = []


def _devices() -> list[str]:
    """The devices this machine offers (torch is asked once)."""
    if not _DEVICES:
        import torch

        _DEVICES.extend(["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())])
    return list(_DEVICES)
