"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every file the backend writes for others to read (checkpoints, reports, pictures, meshes, job
status) goes through here, so the write-to-temp, fsync, rename sequence lives in one place.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_with(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(temp_path)` to fill a temporary file beside `path`, then rename it over `path`.
    The temporary file is removed if `write` or the rename fails (the error propagates)."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(temp))
        with open(temp, "rb+") as handle:  # flush to disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write bytes (or UTF-8 text) to `path` atomically."""
    payload = data.encode() if isinstance(data, str) else data
    return write_with(path, lambda temp: temp.write_bytes(payload))
