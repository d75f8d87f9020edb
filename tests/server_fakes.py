"""A stand-in for backend.train with the same contract, fast and torch-free, for the server tests that
are about the server (queueing, crashes, fuzzing, keys) rather than about training; the end-to-end
tests use the real backend.train. Also the helpers and the small real request the server tests share
(a helper module, not a test module: tests/test_fake_train.py tests the stand-in itself)."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.errors import UserError
from backend.events import CoarseMesh, Log, Preview, Progress, ignore_event, never_stop


# A real run, sized for a busy 2-core CPU: the tiny preset with a smaller field. A few steps leave the
# field too thin for the final mesh export (it refuses, rightly), so these runs skip it; the live
# coarse meshes still stream.
SMALL = {"preset": "tiny", "prompt": "a red cube", "resolution": 24, "hash_log2_table": 12, "hash_levels": 8,
         "hash_levels_start": 4, "max_samples_per_ray": 64, "occupancy_resolution": 16, "seed": 1,
         "export_mesh": False}


@dataclass
class FakeResult:
    outputs: dict = field(default_factory=dict)
    stopped: bool = False


def fake_train(config, out_dir, on_event=ignore_event, should_stop=never_stop, prior=None, resume=False,
               step_s: float = 0.01):
    """Counts steps. Prompts containing "bad prompt" raise UserError, "crash" RuntimeError at step 2,
    "disk full" the OSError a checkpoint write gets on a full disk at step 2, "segfault" kills the
    process running it with SIGSEGV at step 2, and "hold the gil" calls native code that keeps the GIL
    for 8 s after step 1 (as a mesh library or a CUDA sync can)."""
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoint.pt"
    step = json.loads(checkpoint.read_text())["step"] if resume and checkpoint.exists() else 0
    if "bad prompt" in config.prompt:
        raise UserError("the shapes prior knows no object in 'bad prompt': name a shape, e.g. \"a red cube\"",
                        "prompt")
    on_event(Log("info", f"starting at step {step}"))
    while step < config.steps:
        if should_stop():
            checkpoint.write_text(json.dumps({"step": step}))
            return FakeResult(stopped=True)
        if "crash" in config.prompt and step == 2:
            raise RuntimeError("loss became NaN at step 2: lower lr")
        if "disk full" in config.prompt and step == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(checkpoint))
        if "segfault" in config.prompt and step == 2:
            os.kill(os.getpid(), signal.SIGSEGV)
        if "hold the gil" in config.prompt and step == 1:
            hold_the_gil(8)
        time.sleep(step_s)
        step += 1
        on_event(Progress(step, config.steps, t=500, loss=1.0 / step, it_per_s=1 / max(step_s, 1e-3), eta_s=0.0))
        if config.preview_every and step % config.preview_every == 0:
            image = np.full((config.resolution, config.resolution, 3), step % 256, dtype=np.uint8)
            on_event(Preview(step, image))
        if config.coarse_mesh_every and step % config.coarse_mesh_every == 0:
            on_event(CoarseMesh(step, np.eye(3, dtype=np.float32), np.array([[0, 1, 2]], dtype=np.int32),
                                np.full((3, 3), 200, dtype=np.uint8)))
        if config.checkpoint_every and step % config.checkpoint_every == 0:
            checkpoint.write_text(json.dumps({"step": step}))
    (out_dir / "mesh.glb").write_bytes(b"glTF" + config.prompt.encode())
    (out_dir / "report.json").write_text(json.dumps({"steps": step, "resumed": resume}))
    return FakeResult(outputs={"mesh.glb": out_dir / "mesh.glb", "report.json": out_dir / "report.json",
                               "checkpoint.pt": checkpoint if checkpoint.exists() else out_dir / "report.json"})


def hold_the_gil(seconds: int) -> None:
    """Native code that keeps the GIL: libc sleep() called through ctypes.PyDLL, which (unlike
    ctypes.CDLL) does not release the GIL around the call."""
    ctypes.PyDLL(None).sleep(seconds)


@contextlib.contextmanager
def running_server(data_dir, **options):
    """A Server on free loopback ports, on a thread; stopped (cleanly) on exit."""
    from backend.server.server import Server

    options.setdefault("train_fn", functools.partial(fake_train, step_s=0.01))
    options.setdefault("prior_loader", CountingLoader())
    options.setdefault("preview_interval_s", 0.0)
    server = Server(data_dir, port=0, device="cpu", **options)
    thread = server.run_in_thread()
    try:
        yield server
    finally:
        server.stop()
        thread.join(30)


def subscribe_and_settle(client, job_id=None, settle_s: float = 1.0):
    """Subscribe and give the subscription time to reach the server (ZeroMQ's "slow joiner": a SUB
    socket misses what is published before its subscription arrives)."""
    client.subscribe(job_id)
    time.sleep(settle_s)


def collect(client, until, timeout_s: float = 30.0, events=None):
    """Poll events into a list until `until(events)` holds; fail after timeout_s."""
    events = [] if events is None else events
    deadline = time.monotonic() + timeout_s
    while not until(events):
        assert time.monotonic() < deadline, f"gave up waiting; got {[e['type'] for e in events]}"
        events.extend(client.poll_events())
        time.sleep(0.01)
    return events


def wait_state(client, job_id, states, timeout_s: float = 30.0):
    """Poll status until the job is in one of `states`."""
    deadline = time.monotonic() + timeout_s
    while (status := client.status(job_id))["state"] not in states:
        assert time.monotonic() < deadline, f"job {job_id} stuck in {status['state']}: {status['message']}"
        time.sleep(0.02)
    return status


def instant_train(*args, **kwargs):
    """A training run that is done at once, with no outputs."""
    return FakeResult()


class CountingLoader:
    """A prior loader that counts its calls; it wraps `load` (e.g. the real load_prior) if given. It runs
    in the server's worker processes, so with `log` (a file path) each call is appended there as a JSON
    line, and `calls` reads them back in the test's process."""

    def __init__(self, load=None, log=None):
        self.load, self.log = load, log

    def __call__(self, name, device, resolution=64, offline=False, options=None):
        if self.log is not None:
            with open(self.log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps([name, str(device), resolution]) + "\n")
        return object() if self.load is None else self.load(name, device, resolution=resolution, offline=offline,
                                                            options=options)

    @property
    def calls(self):
        if self.log is None or not Path(self.log).exists():
            return []
        return [tuple(json.loads(line)) for line in Path(self.log).read_text().splitlines()]

