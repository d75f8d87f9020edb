"""Request/reply calls to the backend on one background thread, so Blender's UI never waits on them.

A request (submit, status, fetch...) can wait up to the client's timeout when the backend is down;
doing it on Blender's main thread would freeze the window for that long. This thread owns its own
`Client` (ZeroMQ sockets are not thread-safe) and only ever touches plain Python data: each answer
goes into a queue that the main thread drains (`drain`), and the callback runs there, where touching
Blender data is allowed.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from .connection import Connection, connect
from .shared.client import ServerUnreachable

Callback = Callable[[Any, Exception | None], None]
_STOP = object()


class RequestThread:
    """One background thread with its own Client: `call` queues a request, `drain` runs the answers' callbacks."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self._requests: queue.Queue = queue.Queue()
        self._answers: queue.Queue = queue.Queue()
        self._pending = 0  # requests sent and not yet drained; main thread only
        self._thread = threading.Thread(target=self._run, name="distill3d-requests", daemon=True)
        self._thread.start()

    def call(self, request: Callable[..., Any], *args: Any, on_done: Callback | None = None) -> None:
        """Run `request(client, *args)` on the thread, e.g. `call(Client.status, job_id)`;
        `on_done(result, error)` runs later in `drain`."""
        self._pending += 1
        self._requests.put((request, args, on_done))

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def drain(self, max_answers: int = 50) -> int:
        """Run the callbacks of finished requests (main thread). Never waits. Returns how many ran."""
        done = 0
        while done < max_answers:
            try:
                on_done, result, error = self._answers.get_nowait()
            except queue.Empty:
                break
            self._pending -= 1
            done += 1
            if on_done is not None:
                on_done(result, error)
        return done

    def close(self) -> None:
        """Stop the thread and close its sockets. Waits at most for one request in flight (its timeout)."""
        self._requests.put((_STOP, (), None))
        self._thread.join(timeout=self.connection.timeout_s + 2.0)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        client = None
        try:
            while True:
                request, args, on_done = self._requests.get()
                if request is _STOP:
                    return
                try:
                    if client is None:
                        client = connect(self.connection)
                    result, error = request(client, *args), None
                except Exception as err:  # every error goes back to the main thread, shown to the user
                    result, error = None, err
                    if isinstance(err, ServerUnreachable) and client is not None:
                        # A request socket that timed out is unusable; start fresh next time.
                        client.close()
                        client = None
                self._answers.put((on_done, result, error))
        finally:
            if client is not None:
                client.close()
