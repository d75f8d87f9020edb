"""The one client of the Distill3D backend: used by the Blender add-on, scripts, tests and benchmarks.

    with Client("tcp://127.0.0.1:5555") as client:
        job = client.submit({"prompt": "a red cube", "preset": "tiny"})
        client.subscribe(job)
        ...  client.poll_events() from a timer (never blocks) ...
        glb = client.fetch(job, "mesh.glb")

Commands go over a DEALER socket to the server's ROUTER; events arrive on a SUB socket from the
server's PUB on the next port. No call blocks longer than `timeout_s`. After a timeout the command
socket is rebuilt, so a request queued while the server was down is dropped, never delivered late
(a late "submit" would start a job nobody is waiting for).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from .keys import BadKey, read_keypair, read_public_key
from .protocol import (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT_S, FINAL_STATES, JOB_ID_PATTERN, MAX_REPLY_BYTES,
                       ProtocolError, decode_event, decode_header, event_address, event_topic, pack, pack_mesh,
                       split_reply_envelope)


class ClientError(Exception):
    """An error reply from the server, or a client misuse. `field` names the bad field if known."""

    def __init__(self, message: str, field: str | None = None, code: str = "error"):
        super().__init__(message)
        self.message, self.field, self.code = message, field, code


class ServerUnreachable(ClientError):
    """No answer within the timeout: the backend is not running, or not at this address."""


class VersionMismatch(ClientError):
    """Client and server speak different protocol versions; the message says which to update."""


# A submit that carries a mesh waits this much longer per byte: the upload and the backend's check of
# it take time in proportion (docs/blender.md measures a 1M-triangle mesh).
UPLOAD_BYTES_PER_S = 10e6
EVENT_QUEUE = 200  # events buffered in this process while nobody polls (~15 s of a job's events)
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
# One side uses CurveZMQ keys and the other does not.
_MECHANISM_MISMATCH = getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", 0x11000002)


class Client:
    def __init__(self, address: str = f"tcp://{DEFAULT_HOST}:{DEFAULT_PORT}", timeout_s: float = DEFAULT_TIMEOUT_S,
                 server_public_key: Any = None, client_keys: Any = None):
        try:
            self.event_address = event_address(address)
        except ProtocolError as error:
            raise ClientError(error.message, "address") from None
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ClientError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}", "timeout_s")
        self.address, self.timeout_s = address, float(timeout_s)
        self._curve = _curve_keys(server_public_key, client_keys)
        self._context = zmq.Context()
        self._command: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._events: zmq.Socket | None = None
        self._topics: set[bytes] = set()
        self._next_id = 1
        self.dropped_events = 0  # malformed or other-version events skipped by poll_events

    # -- commands ---------------------------------------------------------------------------------

    def info(self) -> dict:
        return self._call("info")[0]

    def submit(self, request: dict, mesh: dict | None = None) -> str:
        """Queue a job; returns its id. `request`: GenerateConfig fields plus optional "preset".
        `mesh` (with source "texture" or "shape"): {"vertices": float32 [V, 3] glTF frame, "faces":
        int32 [F, 3], optionally "corner_uv": float32 [3F, 2]} as little-endian buffers (bytes, array,
        numpy arrays); shared/PROTOCOL.md "Sending a mesh"."""
        if mesh is None:
            return self._call("submit", request=request)[0]["job_id"]
        unknown = sorted(set(mesh) - {"vertices", "faces", "corner_uv"})
        if unknown or "vertices" not in mesh or "faces" not in mesh:
            raise ClientError(f"mesh must have vertices, faces and optionally corner_uv, got {sorted(mesh)}", "mesh")
        try:
            header, frames = pack_mesh(mesh["vertices"], mesh["faces"], mesh.get("corner_uv"))
        except ProtocolError as error:
            raise ClientError(error.message, error.field, error.code) from None
        size = sum(memoryview(frame).nbytes for frame in frames)
        return self._call("submit", request=request, mesh=header, _frames=frames,
                          _timeout_s=self.timeout_s + size / UPLOAD_BYTES_PER_S)[0]["job_id"]

    def cancel(self, job_id: str) -> dict:
        return self._call("cancel", job_id=job_id)[0]

    def status(self, job_id: str) -> dict:
        return self._call("status", job_id=job_id)[0]

    def jobs(self) -> list[dict]:
        """Status of every job the server knows, newest first."""
        return self._call("jobs")[0]

    def fetch(self, job_id: str, name: str) -> bytes:
        """A result file of a job (e.g. "mesh.glb"), or "preview.png", the latest preview."""
        result, frames = self._call("fetch", job_id=job_id, name=name)
        if len(frames) != 1 or len(frames[0]) != result.get("size"):
            raise ClientError(f"the backend sent a damaged copy of {name}: fetch it again", "name")
        return frames[0]

    # -- events -----------------------------------------------------------------------------------

    def subscribe(self, job_id: str | None = None) -> None:
        """Receive the events of `job_id` (of every job for None). Subscriptions add up; calling
        again with the same argument does nothing."""
        topic = event_topic(self._job_id(job_id))
        if self._events is None:
            self._events = self._socket(zmq.SUB)
            self._events.rcvhwm = EVENT_QUEUE  # a client that stops reading holds this many, then drops
            self._events.connect(self.event_address)
        if topic not in self._topics:
            self._events.setsockopt(zmq.SUBSCRIBE, topic)
            self._topics.add(topic)

    def poll_events(self, max_events: int = 100, timeout_s: float = 0.0) -> list[dict]:
        """The events waiting now, oldest first; never blocks (unless timeout_s > 0: then it waits
        up to that long for the first event). Events published while nobody read them may be
        dropped (the server never waits for a slow client): catch up with status()."""
        events: list[dict] = []
        if self._events is not None and timeout_s > 0:
            self._events.poll(int(timeout_s * 1000))
        while self._events is not None and len(events) < max_events:
            try:
                frames = self._events.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                events.append(decode_event(frames))
            except ProtocolError:
                self.dropped_events += 1
        return events

    def wait(self, job_id: str, timeout_s: float | None = None,
             on_event: Callable[[dict], None] | None = None, poll_s: float = 0.05) -> dict:
        """Block until the job is done, failed or cancelled, handing its events to `on_event`; the
        blocking driver for scripts and `blender -b`, where timers never fire. Returns the status."""
        self.subscribe(job_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        next_status = 0.0
        while True:
            for event in self.poll_events():
                if on_event is not None and event["job_id"] == job_id:
                    on_event(event)
            if time.monotonic() >= next_status:  # events may be dropped, the status is the truth
                status = self.status(job_id)
                if status["state"] in FINAL_STATES:
                    for event in self.poll_events():
                        if on_event is not None and event["job_id"] == job_id:
                            on_event(event)
                    return status
                next_status = time.monotonic() + 0.5
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"job {job_id} is still {status['state']} after {timeout_s} s", "timeout_s")
            self.poll_events(0, timeout_s=poll_s)  # sleep until an event arrives or poll_s passes

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the sockets at once (zero linger). Safe to call twice."""
        self._drop_command_socket()
        if self._events is not None:
            self._events.close(linger=0)
            self._events = None
        if not self._context.closed:
            self._context.term()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _job_id(self, job_id: str | None) -> str | None:
        if job_id is not None and (not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id)):
            raise ClientError(f"job_id must be a job id string, got {job_id!r}", "job_id")
        return job_id

    def _socket(self, kind: int) -> zmq.Socket:
        if self._context.closed:
            raise ClientError("this client is closed: create a new Client", "client")
        sock = self._context.socket(kind)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        if "[" in self.address:
            sock.ipv6 = True
        if self._curve is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self._curve
        return sock

    def _command_socket(self) -> zmq.Socket:
        if self._command is None:
            sock = self._socket(zmq.DEALER)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing until a connection is up
            # to tell "keys rejected" or "keys needed" from "not running"
            self._monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
            sock.connect(self.address)
            self._command = sock
        return self._command

    def _drop_command_socket(self) -> str | None:
        """Close the command socket; "mismatch" if one side used keys and the other not, "rejected"
        if another key handshake failed on it, else None."""
        rejected = None
        if self._monitor is not None:
            while self._monitor.poll(0):
                event = recv_monitor_message(self._monitor)
                if event["event"] & _HANDSHAKE_FAILED:
                    rejected = "mismatch" if event["value"] == _MECHANISM_MISMATCH else rejected or "rejected"
            self._command.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._command is not None:
            self._command.close(linger=0)
            self._command = None
        return rejected

    def _unreachable(self) -> ServerUnreachable:
        rejected = self._drop_command_socket()
        if rejected == "mismatch" and self._curve is None:
            return ServerUnreachable(f"the backend at {self.address} requires keys and this client sent none: pass "
                                     "the server's public key (server.key) as server_public_key and a client key "
                                     "whose public half is in the server's --authorized-keys folder as client_keys",
                                     "keys", "unreachable")
        if rejected == "mismatch":
            return ServerUnreachable(f"the backend at {self.address} uses no keys but this client sent some: connect "
                                     "without server_public_key and client_keys", "keys", "unreachable")
        if rejected:
            return ServerUnreachable(f"the backend at {self.address} rejected this client's keys: use the server's "
                                     "public key (server.key) and a client key whose public half is in the "
                                     "server's --authorized-keys folder", "keys", "unreachable")
        return ServerUnreachable(f"no answer from the Distill3D backend at {self.address} within {self.timeout_s:g} s: "
                                 "start it (python3 build.py serve, or Start backend in the add-on panel) and "
                                 "check the address and port", None, "unreachable")

    def _call(self, cmd: str, _frames: list = (), _timeout_s: float | None = None,
              **args: Any) -> tuple[Any, list[bytes]]:
        sock = self._command_socket()
        request_id, self._next_id = self._next_id, self._next_id + 1
        deadline = time.monotonic() + (_timeout_s or self.timeout_s)
        left = lambda: max(0, int((deadline - time.monotonic()) * 1000))  # noqa: E731
        try:
            message = pack({"id": request_id, "cmd": cmd, **args}, *_frames)
        except (TypeError, ValueError) as error:
            raise ClientError(f"the {cmd} arguments cannot be sent as JSON ({error})", "request") from None
        try:
            if not sock.poll(left(), zmq.POLLOUT):
                raise self._unreachable()
            sock.send_multipart([b"", *message], zmq.NOBLOCK)
            while True:
                if not sock.poll(left(), zmq.POLLIN):
                    raise self._unreachable()
                frames = split_reply_envelope(sock.recv_multipart(zmq.NOBLOCK))
                header = self._reply_header(frames)
                if header.get("id") == request_id:  # anything else answers an older, abandoned request
                    break
        except zmq.Again:
            raise self._unreachable() from None
        if header.get("ok") is True:
            return header.get("result"), frames[1:]
        error = header.get("error") if isinstance(header.get("error"), dict) else {}
        message, code = str(error.get("message", "the backend refused the request")), error.get("code", "error")
        raise (VersionMismatch if code == "version" else ClientError)(message, error.get("field"), code)

    def _reply_header(self, frames: list[bytes]) -> dict:
        try:
            if not frames:
                raise ProtocolError("an empty reply", "header")
            return decode_header(frames[0], sender="server")
        except ProtocolError as error:
            if error.code == "version":
                self._drop_command_socket()
                raise VersionMismatch(error.message, "v", "version") from None
            raise ClientError(f"the backend at {self.address} sent a malformed reply ({error.message}): "
                              "check that the address is a Distill3D backend", "header", "bad_reply") from None


def _curve_keys(server_public_key: Any, client_keys: Any) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret) for CurveZMQ, or None for plain loopback."""
    if server_public_key is None:
        if client_keys is not None:
            raise ClientError("client_keys need server_public_key as well: pass the server's public key",
                              "server_public_key")
        return None
    try:
        server = read_public_key(server_public_key)
        public, secret = read_keypair(client_keys) if client_keys is not None else zmq.curve_keypair()
    except BadKey as error:
        raise ClientError(str(error), "keys") from None
    return server, public, secret
