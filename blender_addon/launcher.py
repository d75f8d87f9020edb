"""Start and stop a local backend process (`python -m backend serve`) for the "Start backend" button.

The backend needs its own Python (with torch), never Blender's. Its output goes to a log file, not a
pipe, so a chatty backend can never block on a full pipe that Blender does not read; the panel shows
the log's last line when the process dies at start. The process is stopped when the add-on is
disabled and when Blender quits (atexit), so nothing is left running.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import tempfile
from pathlib import Path

from .shared.checkout import venv_python

_process: subprocess.Popen | None = None
_log_path: Path | None = None


class LaunchError(Exception):
    """The backend cannot be started; the message says what to set."""


def checkout_python(backend_path: str) -> str:
    """The interpreter of the checkout's venv (shared/checkout.py), if there is one ("" otherwise)."""
    if not backend_path:
        return ""
    candidate = venv_python(backend_path)
    return str(candidate) if candidate.is_file() else ""


def command(python: str, backend_path: str, port: int, data_dir: str = "") -> list[str]:
    """The command line that serves the backend on loopback at `port` (events on port + 1)."""
    python = python or checkout_python(backend_path)
    if not python:
        raise LaunchError("no Python set for the backend: in Preferences > Add-ons > Distill3D set "
                          "\"Backend Python\" (the venv's python with torch) or \"Backend folder\"")
    if not Path(python).is_file():
        raise LaunchError(f"the backend Python {python} does not exist: fix \"Backend Python\" in the add-on preferences")
    if backend_path and not Path(backend_path, "backend").is_dir():
        raise LaunchError(f"{backend_path} has no backend/ folder: set \"Backend folder\" to the Distill3D "
                          "checkout (the folder holding backend/ and build.py)")
    cmd = [python, "-m", "backend", "serve", "--port", str(port)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return cmd


def start(python: str, backend_path: str, port: int, data_dir: str = "") -> subprocess.Popen:
    """Launch the backend unless ours is already running. Returns at once (the backend loads for a
    few seconds; the session notices when it answers)."""
    global _process, _log_path
    if running():
        return _process
    cmd = command(python, backend_path, port, data_dir)
    env = dict(os.environ)
    if backend_path:  # `-m backend` must find the package whatever Blender's working folder is
        env["PYTHONPATH"] = os.pathsep.join(p for p in (backend_path, env.get("PYTHONPATH", "")) if p)
    env.pop("PYTHONHOME", None)  # Blender's would point the backend's Python at the wrong stdlib
    _log_path = Path(tempfile.gettempdir(), f"distill3d-backend-{port}.log")
    with open(_log_path, "wb") as log:
        _process = subprocess.Popen(cmd, cwd=backend_path or None, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    return _process


def running() -> bool:
    return _process is not None and _process.poll() is None


def exit_message() -> str:
    """Why our backend process is gone ("" while it runs or was never started)."""
    if _process is None or _process.poll() is None:
        return ""
    tail = ""
    if _log_path is not None and _log_path.exists():
        lines = [l for l in _log_path.read_text(errors="replace").splitlines() if l.strip()]
        tail = lines[-1].strip() if lines else ""
    return (f"the backend exited with code {_process.returncode}" + (f": {tail}" if tail else "")
            + (f" (log: {_log_path})" if _log_path else ""))


def stop(timeout_s: float = 5.0) -> None:
    """Stop our backend process (ask first, then kill). Does nothing for a backend we did not start."""
    global _process
    process, _process = _process, None
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def log_path() -> Path | None:
    return _log_path


def install() -> None:
    atexit.register(stop)  # Blender quitting never leaves our backend behind


def uninstall() -> None:
    stop()
    atexit.unregister(stop)
