"""Publishing events from any thread. ZeroMQ sockets must stay on one thread, so each thread that
publishes (the workers, the command loop) gets its own inproc PUSH socket; the server loop forwards
what arrives to the PUB socket. Sends never block: when a queue is full the event is dropped, and
the job's status (which clients can always ask for) stays the truth."""
from __future__ import annotations

import threading
import time
from typing import Any

import zmq

from shared.protocol import event_topic, pack

SEND_HWM = 10_000  # events queued between a worker and the server loop


class EventBus:
    def __init__(self, context: zmq.Context, endpoint: str):
        self._context, self.endpoint = context, endpoint
        self._local = threading.local()
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()
        self.dropped = 0

    def publish(self, job_id: str, kind: str, fields: dict[str, Any], *frames: bytes) -> None:
        """One event: header {"type": kind, "job_id", "time" (server clock, seconds), **fields}."""
        header = {"type": kind, "job_id": job_id, "time": time.time(), **fields}
        try:
            self._socket().send_multipart([event_topic(job_id), *pack(header, *frames)], zmq.NOBLOCK, copy=False)
        except (zmq.Again, zmq.ContextTerminated, zmq.ZMQError):
            self.dropped += 1

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "socket", None)
        if sock is None:
            sock = self._context.socket(zmq.PUSH)
            sock.linger = 0
            sock.sndhwm = SEND_HWM
            sock.connect(self.endpoint)
            self._local.socket = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def close(self) -> None:
        """Close every thread's socket (call once the publishing threads have finished)."""
        with self._lock:
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()
