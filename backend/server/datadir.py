"""The data folder's two rules: nothing in it leads out of it, and a write it refuses becomes one
sentence a user can act on.

Containment: job folders and the files the server reads or serves must be real directories and real
files inside the data folder. A symbolic link anywhere on the way is refused, not followed: files are
opened one path component at a time with O_NOFOLLOW (relative to the already opened folder), so a
link swapped in between a check and the open is refused too. Where the OS lacks O_NOFOLLOW or
dir_fd (Windows), each component is checked with lstat instead.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import UserError
from ..fileio import write_atomic
from ..runner.failures import FULL, write_problem

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_AT_SUPPORTED = bool(_NOFOLLOW) and os.open in os.supports_dir_fd


class Outside(OSError):
    """A path that is a symbolic link, not a regular file or directory, or leaves its folder."""


def _parts(relative: str | Path) -> tuple[str, ...]:
    parts = PurePosixPath(Path(relative).as_posix()).parts
    if not parts or any(part in ("", ".", "..", "/") for part in parts):
        raise Outside(errno.EPERM, "not a plain relative path", str(relative))
    return parts


def is_real_dir(path: Path) -> bool:
    """A directory, and not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def open_inside(folder: Path, relative: str | Path) -> BinaryIO:
    """`folder/relative` opened for reading, refusing (Outside) a link at `folder` itself or at any
    component after it, and anything but a regular file."""
    parts = _parts(relative)
    if _AT_SUPPORTED:
        fd = os.open(folder, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
        try:
            for part in parts[:-1]:
                inner = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = inner
            file_fd = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW, dir_fd=fd)
        except OSError as error:  # ELOOP / ENOTDIR: a link or a file where a folder should be
            raise Outside(error.errno, "a link or missing", str(relative)) from None
        finally:
            os.close(fd)
    else:
        path = folder
        for part in ("",) + parts:  # the folder itself, then each component
            path = path / part if part else path
            if os.path.islink(path):
                raise Outside(errno.ELOOP, "a symbolic link", str(relative))
        file_fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise Outside(errno.EPERM, "not a regular file", str(relative))
    return os.fdopen(file_fd, "rb")


def is_real_file_inside(folder: Path, relative: str | Path) -> bool:
    try:
        with open_inside(folder, relative):
            return True
    except OSError:
        return False


def read_inside(folder: Path, relative: str | Path) -> bytes | None:
    """The bytes of a real file inside `folder`, or None (missing, a link, unreadable)."""
    try:
        with open_inside(folder, relative) as handle:
            return handle.read()
    except OSError:
        return None


def check_writable(data_dir: Path) -> Path:
    """The data folder's jobs/ folder, created if need be, after a test write; UserError (one line,
    naming --data-dir) if the folder cannot be written."""
    jobs = Path(data_dir) / "jobs"
    try:
        jobs.mkdir(parents=True, exist_ok=True)
        probe = write_atomic(jobs / ".write-test", b"ok")
        probe.unlink()
    except OSError as error:
        fix = ("free some space or pass --data-dir on another disk" if error.errno in FULL else
               "make it writable or pass --data-dir a writable folder")
        raise UserError(f"{write_problem(error, 'the data folder')}: {data_dir} cannot hold "
                        f"jobs; {fix}") from None
    return jobs.resolve()
