"""The backend server: jobs over ZeroMQ with live previews, cancel, and results kept on disk.
Protocol: shared/PROTOCOL.md. Start it with `python -m backend serve` (serve_from_args)."""
from __future__ import annotations

from .cli import serve_from_args


def __getattr__(name: str):
    if name == "Server":  # lazily: the server pulls in pillow and numpy, the CLI's --help need not
        from .server import Server

        return Server
    raise AttributeError(name)


__all__ = ["Server", "serve_from_args"]
