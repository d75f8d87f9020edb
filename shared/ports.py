"""Finding a free command port for a local server: the protocol needs port P and P + 1 (events)."""
from __future__ import annotations

import socket


def free_port_pair(host: str = "127.0.0.1", tries: int = 100) -> int:
    """A port P such that P and P + 1 are both free on `host` right now (tests and benchmarks may race
    other programs for them, so use it promptly)."""
    for _ in range(tries):
        with socket.socket() as a, socket.socket() as b:
            a.bind((host, 0))
            port = a.getsockname()[1]
            try:
                b.bind((host, port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no two adjacent free ports found on {host} in {tries} tries")
