"""What the batch tests (tests/test_batch.py) and the Ray cluster tests (tests/test_ray_cluster.py)
share: the `batch` command line they run and how they read an item's batch_item.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # generous, a hang guard only: the test machine is shared
# One torch thread per process: on the shared 2-core test machine a 2-thread CPU step measured 12x
# slower than a 1-thread one (2.5 s vs 0.2 s, tiny preset), and Ray gives each of 2 workers 1 CPU anyway.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def batch_command(spec: Path, out: Path, *extra: str) -> list[str]:
    """`python -m backend batch` on the tiny preset at 24 pixels, without previews or a progress bar."""
    return [sys.executable, "-m", "backend", "batch", str(spec), "--out", str(out), "--preset", "tiny",
            "--resolution", "24", "--preview-every", "0", "--no-progress", *extra]


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, env=ENV)


def item_status(folder: Path) -> dict:
    """An item's batch_item.json ({} while it is missing or half-written)."""
    try:
        return json.loads((folder / "batch_item.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
