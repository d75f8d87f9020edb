#!/usr/bin/env python3
"""Set up and run Distill3D. Plain Python, standard library only.

    python3 build.py demo    # create .venv if needed, run a text-to-mesh job on the built-in prior (CPU)
    python3 build.py test    # create .venv with dev dependencies if needed, run the whole test suite
    python3 build.py serve   # run the backend server (ZeroMQ, loopback) for the Blender add-on
    python3 build.py addon   # build dist/distill3d-<version>.zip, the Blender extension
    python3 build.py bench   # run the benchmark scripts under bench/

Everything installs into .venv beside this file. A stamp file records which dependency set was
installed, so a second run starts at once and a changed pyproject.toml triggers a reinstall.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

from shared.checkout import VENV_DIR, venv_python  # standard library only, like this script

ROOT = Path(__file__).resolve().parent
VENV = ROOT / VENV_DIR
PYTHON = venv_python(ROOT)


def run(*args: str | Path, **kwargs) -> int:
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.call([str(a) for a in args], cwd=ROOT, **kwargs)


def ensure_venv(extras: str = "") -> None:
    """Create .venv and install this project (with optional extras) unless already done."""
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()[:16]
    stamp = VENV / f".installed-{want}"
    if stamp.exists():
        return
    if not PYTHON.exists():
        print(f"Creating virtual environment in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    target = f".[{extras}]" if extras else "."
    # torch is pinned in pyproject.toml: an unpinned torch would pull gigabytes of CUDA wheels.
    if run(PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", target) != 0:
        sys.exit("Dependency install failed: see the pip output above. Fix the cause and run again.")
    for old in VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()


def demo(args: list[str]) -> int:
    ensure_venv()
    out = ROOT / "results" / "demo"
    return run(PYTHON, "-m", "backend", "generate", "a red cube", "--preset", "draft", "--out", out, *args)


def test(args: list[str]) -> int:
    ensure_venv("dev")
    code = run(PYTHON, "-m", "pytest", "-q", "-ra", *args)
    return 0 if code == 5 and "-k" in args else code  # 5 = nothing collected; fine only for a -k filter


def serve(args: list[str]) -> int:
    ensure_venv()
    return run(PYTHON, "-m", "backend", "serve", *args)


def addon(args: list[str]) -> int:
    ensure_venv("dev")
    return run(PYTHON, ROOT / "tools" / "build_addon.py", *args)


def bench(args: list[str]) -> int:
    ensure_venv("dev")
    scripts = sorted((ROOT / "bench").glob("bench_*.py")) if not args else [Path(a) for a in args]
    return max((run(PYTHON, s) for s in scripts), default=0)


COMMANDS = {"demo": demo, "test": test, "serve": serve, "addon": addon, "bench": bench}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
