"""How much the Blender add-on costs Blender's main thread, and how fresh its preview is.

    python bench/bench_addon.py [--steps 100] [--out bench/out/addon.json]

1. A real job (built-in shapes prior, tiny preset) on a real backend subprocess, followed by the
   add-on's timer callback at its own pace, in headless Blender (PyPI bpy) with the built zip
   installed: time inside each callback (median, p95, max; goal: under 5 ms), the callback that
   imports the finished mesh reported on its own, and the preview latency from the backend
   publishing a render to the image datablock holding it.
2. The two per-update costs in isolation, at sizes beyond the tiny preset: a PNG preview into the
   image datablock, and a coarse mesh into the live proxy object.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The test module sets up a throwaway Blender user folder before importing bpy, builds and installs
# the zip, and starts backends: the benchmark reuses exactly that.
from tests import blender_harness as harness  # noqa: E402

bpy = harness.bpy


def summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"n": 0}
    ms = sorted(s * 1000 for s in seconds)
    return {"n": len(ms), "median_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))],
            "max_ms": ms[-1]}


class TimedTimer:
    """Blender's timer callback (sync.tick) timed from outside, with what each call applied: the
    add-on itself keeps no counters. `sync.apply` is wrapped only to observe what it was given."""

    def __init__(self, sync):
        self.sync, self.ticks, self.preview_latencies = sync, [], []
        self._apply, self._seen = sync.apply, (0, 0, 0)
        sync.apply = self._observe

    def _observe(self, session, updates) -> None:
        self._apply(session, updates)
        self._seen = (len(updates.previews), len(updates.meshes), len(updates.results))
        for event in updates.previews.values():  # the backend stamps each event with its clock (same machine)
            if isinstance(event.get("time"), (int, float)):
                self.preview_latencies.append(time.time() - event["time"])

    def __call__(self) -> float:
        self._seen = (0, 0, 0)
        started = time.perf_counter()
        delay = self.sync.tick()
        self.ticks.append((time.perf_counter() - started, *self._seen))
        return delay

    def close(self) -> None:
        self.sync.apply = self._apply


def live_job(steps: int, tmp: Path) -> dict:
    backend = harness.Backend(tmp, coarse_mesh_every=5)
    sync = harness.addon_module("sync")
    timer = TimedTimer(sync)
    try:
        session = harness.connect(backend.port)
        harness.tick_until(lambda: session.backend == "ok", timeout_s=60)
        timer.ticks.clear()
        # The tests' small field: the run ends in an exported mesh, so the import is timed too.
        bpy.ops.distill3d.generate(prompt="a red cube", preset="tiny", steps=steps, preview_every=1,
                                   extra=harness.FAST)
        deadline = time.monotonic() + 1800
        while not (session.jobs and all(j.finished for j in session.jobs.values())):
            if time.monotonic() > deadline:
                raise SystemExit("the job did not finish within 30 minutes")
            time.sleep(timer())  # exactly what Blender's timer calls, at the pace it asks for
        (job,) = session.jobs.values()
        ticks = timer.ticks  # (seconds, previews, meshes, results) per call
        return {"state": job.state, "message": job.message or job.import_error, "steps": steps,
                "timer_callback_all": summary([t[0] for t in ticks]),
                "timer_callback_no_import": summary([t[0] for t in ticks if not t[3]]),
                "with_preview": summary([t[0] for t in ticks if t[1] and not t[3]]),
                "with_live_mesh": summary([t[0] for t in ticks if t[2] and not t[3]]),
                "events_only": summary([t[0] for t in ticks if not any(t[1:])]),
                "import_callback": summary([t[0] for t in ticks if t[3]]),
                "preview_latency": summary(timer.preview_latencies)}
    finally:
        timer.close()
        sync.reset_session()
        backend.stop()


def update_costs(repeats: int = 20) -> dict:
    from PIL import Image

    images = harness.addon_module("images")
    proxy = harness.addon_module("proxy")
    out = {}
    rng = np.random.default_rng(0)
    for size in (64, 128, 512):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG", compress_level=1)
        png = buffer.getvalue()
        times, decode = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            image = images.show_png("bench preview", png)
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            image.pixels[0]  # what the first draw pays: Blender decodes the packed PNG lazily
            decode.append(time.perf_counter() - started)
        out[f"preview_{size}px"] = {"update": summary(times), "first_read": summary(decode)}
    for subdivisions in (3, 5):  # ~640 and ~10k vertices
        import trimesh

        sphere = trimesh.creation.icosphere(subdivisions)
        event = {"vertex_count": len(sphere.vertices), "face_count": len(sphere.faces),
                 "vertices": sphere.vertices.astype("<f4").tobytes(), "faces": sphere.faces.astype("<i4").tobytes(),
                 "colors": rng.integers(0, 255, (len(sphere.vertices), 3), dtype=np.uint8).tobytes()}
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            proxy.show_mesh("bench proxy", event, (0, 0, 0), 1.0)
            times.append(time.perf_counter() - started)
        out[f"mesh_{len(sphere.vertices)}_vertices"] = summary(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps of the live job (a live mesh every 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "addon.json")
    args = parser.parse_args()
    harness.install_addon()
    import tempfile

    results = {"update_costs": update_costs()}
    with tempfile.TemporaryDirectory() as tmp:
        results["live_job"] = live_job(args.steps, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    live = results["live_job"]
    timer = live["timer_callback_no_import"]
    if timer.get("n"):
        print(f"\ntimer callback: median {timer['median_ms']:.2f} ms, p95 {timer['p95_ms']:.2f} ms, "
              f"max {timer['max_ms']:.2f} ms over {timer['n']} calls (goal: under 5 ms); the one that "
              f"imports the mesh: {live['import_callback'].get('max_ms', float('nan')):.0f} ms; preview latency "
              f"median {live['preview_latency'].get('median_ms', float('nan')):.0f} ms")
    bpy.ops.preferences.addon_disable(module=harness.ADDON)


if __name__ == "__main__":
    main()
