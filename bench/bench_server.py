"""Benchmark of the backend server over real sockets on loopback.

Measures, for a server PROCESS:
  * event latency, publish -> receipt (median, p99), from the server's "time" stamp in every event;
  * submit -> first preview, cold (first job) and with the prior already loaded (warm);
  * the server's resident memory (RSS) while 20 clients watch one job, most of them slow: 10 never
    read, 9 read a few events a second, 1 reads everything. ZeroMQ's per-subscriber high-water mark
    makes slow clients lose old events instead of the server buffering them without bound.

Two workloads:
  real  - `python -m backend serve` with the real training loop (shapes prior, tiny preset);
  flood - the same server code with a synthetic training loop that emits a 256x256 noise preview
          (~200 KB PNG, incompressible) and a progress event as fast as it can: the worst case.

A third, --mode latency, measures COMMAND latency (status round trips, p50 / p99 / max) while a real
job trains and then exports its mesh with the largest export settings the protocol allows
(mesh_resolution 512, texture_size 8192, face_budget 10,000,000): one client asks for the job's
status every 50 ms while another takes every event. The export is measured for --export-seconds
(it may run far longer on a small CPU), then the server and its worker are killed. --root benches
the server of another checkout (e.g. an older commit) for a before/after comparison.

    python bench/bench_server.py                 # real and flood, 20 s of watching each
    python bench/bench_server.py --mode flood --seconds 10
    python bench/bench_server.py --mode latency --export-seconds 60
Results are printed and written to bench/out/server.json (latency: bench/out/server_latency.json).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.client import Client, ServerUnreachable  # noqa: E402
from shared.ports import free_port_pair

# The real workload: the tiny preset with previews every step, long enough to watch.
REAL_JOB = {"preset": "tiny", "prompt": "a red cube", "steps": 100_000, "preview_every": 1, "checkpoint_every": 0,
            "coarse_mesh_every": 0, "export_mesh": False}
FLOOD_JOB = {"preset": "tiny", "prompt": "noise", "steps": 1_000_000, "preview_every": 1, "checkpoint_every": 0}
# The latency workload: a short real run of the tiny preset, then the largest export the protocol allows.
LATENCY_JOB = {"preset": "tiny", "prompt": "a red cube", "steps": 40, "preview_every": 1, "coarse_mesh_every": 10,
               "checkpoint_every": 20, "export_mesh": True}


# -- the synthetic training loop, run inside the server process for --mode flood ---------------------

@dataclass
class _Result:
    outputs: dict = field(default_factory=dict)
    stopped: bool = True


def flood_train(config, out_dir, on_event, should_stop, prior=None, resume=False):
    import numpy as np

    from backend.events import Preview, Progress

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    step, start = 0, time.perf_counter()
    while not should_stop():
        step += 1
        rate = step / (time.perf_counter() - start)
        on_event(Progress(step, config.steps, t=500, loss=0.1, it_per_s=rate, eta_s=(config.steps - step) / rate))
        on_event(Preview(step, np.roll(image, step, axis=0)))
    return _Result()


def no_prior(*args, **kwargs) -> None:
    return None


def serve_flood(port: int, data_dir: str) -> None:
    from backend.server.server import Server

    server = Server(data_dir, port=port, device="cpu", train_fn=flood_train, prior_loader=no_prior,
                    preview_interval_s=0.0, progress_interval_s=0.0)
    server.start()
    server.serve_forever()


# -- measuring ------------------------------------------------------------------------------------



def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def start_server(mode: str, port: int, data_dir: str, root: Path = ROOT, serve_args: tuple = ()) -> subprocess.Popen:
    if mode in ("real", "latency"):
        command = [sys.executable, "-m", "backend", "serve", "--port", str(port), "--data-dir", data_dir,
                   "--preview-interval", "0.5", "--log-level", "warning", "--device", "cpu", *serve_args]
    else:
        command = [sys.executable, __file__, "--serve-flood", str(port), data_dir]
    environment = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, env=environment,
                               start_new_session=True)  # its own process group: killed with its workers
    probe = Client(f"tcp://127.0.0.1:{port}", timeout_s=2.0)
    deadline = time.monotonic() + 300
    while True:
        try:
            probe.info()
            break
        except ServerUnreachable:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {mode} server did not start")
    probe.close()
    return process


def first_preview_s(client: Client, request: dict) -> tuple[str, float]:
    """Submit and time until this client receives the job's first preview."""
    client.subscribe()
    time.sleep(0.3)  # let the subscription reach the publisher
    client.poll_events(10_000)
    start = time.perf_counter()
    job = client.submit(request)
    while True:
        for event in client.poll_events(timeout_s=0.5):
            if event["type"] == "preview" and event["job_id"] == job:
                return job, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def watch(process: subprocess.Popen, address: str, job: str, seconds: float, watchers: int) -> dict:
    """One fast client measures latency; `watchers - 1` others are slow or idle. Samples server RSS."""
    fast = Client(address, timeout_s=10.0)
    fast.subscribe(job)
    idle = [Client(address, timeout_s=10.0) for _ in range(watchers // 2)]
    slow = [Client(address, timeout_s=10.0) for _ in range(max(0, watchers - 1 - len(idle)))]
    for client in idle + slow:
        client.subscribe(job)
    time.sleep(0.5)
    fast.poll_events(100_000)
    latencies, rss, received = [], [], {"fast": 0, "slow": 0, "idle": 0}
    kinds: dict[str, int] = {}
    end, next_slow = time.monotonic() + seconds, 0.0
    while time.monotonic() < end:
        for event in fast.poll_events(1000, timeout_s=0.05):
            latencies.append(time.time() - event["time"])
            kinds[event["type"]] = kinds.get(event["type"], 0) + 1
            received["fast"] += 1
        if time.monotonic() >= next_slow:  # slow readers take a few events a second
            for client in slow:
                received["slow"] += len(client.poll_events(5))
            rss.append(rss_mb(process.pid))
            next_slow = time.monotonic() + 0.25
    for client in idle:  # what the idle clients find when they finally look: at most the HWM's worth
        while batch := client.poll_events(10_000):
            received["idle"] += len(batch)
    for client in [fast, *idle, *slow]:
        client.close()
    return {"latency_ms_median": 1000 * statistics.median(latencies) if latencies else None,
            "latency_ms_p99": 1000 * percentile(latencies, 0.99), "events_fast_client": received["fast"],
            "events_by_type": kinds, "events_per_idle_client": received["idle"] / max(1, len(idle)),
            "events_per_slow_client": received["slow"] / max(1, len(slow)),
            "server_rss_mb_max": max(rss) if rss else None, "server_rss_mb_last": rss[-1] if rss else None}


def run(mode: str, seconds: float, watchers: int) -> dict:
    port = free_port_pair()
    address = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        process = start_server(mode, port, data_dir)
        try:
            request = REAL_JOB if mode == "real" else FLOOD_JOB
            client = Client(address, timeout_s=30.0)
            cold_job, cold = first_preview_s(client, request)
            client.cancel(cold_job)
            while client.status(cold_job)["state"] != "cancelled":
                time.sleep(0.05)
            job, warm = first_preview_s(client, {**request, "seed": 1})
            rss_idle = rss_mb(process.pid)
            alone = watch(process, address, job, seconds, watchers=1)
            crowd = watch(process, address, job, seconds, watchers=watchers)
            client.cancel(job)
            client.close()
        finally:
            process.terminate()
            process.wait(120)
    return {"mode": mode, "submit_to_first_preview_s": {"cold": cold, "warm_prior": warm},
            "server_rss_mb_before_watching": rss_idle, "one_client": alone, f"{watchers}_clients": crowd}


def largest_export() -> dict:
    """The largest mesh export settings shared.protocol.REQUEST_FIELDS allows."""
    from shared.protocol import REQUEST_FIELDS

    return {name: int(REQUEST_FIELDS[name].high) for name in ("mesh_resolution", "texture_size", "face_budget")}


def summary_ms(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": 1000 * percentile(values, 0.5), "p99_ms": 1000 * percentile(values, 0.99),
            "max_ms": 1000 * max(values)} if values else {"n": 0}


def command_latency(export_seconds: float, root: Path, serve_args: tuple = ()) -> dict:
    """Status round trips every 50 ms while a job trains, then exports at the largest settings."""
    port = free_port_pair()
    address = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        process = start_server("latency", port, data_dir, root, serve_args)
        try:
            prober, watcher = Client(address, timeout_s=120.0), Client(address, timeout_s=120.0)
            watcher.subscribe()
            job = prober.submit({**LATENCY_JOB, **largest_export()})
            phases: dict[str, list[float]] = {"queued": [], "training": [], "finishing": []}
            export_started, events, state = None, 0, "queued"
            while True:
                events += len(watcher.poll_events(10_000))
                start = time.perf_counter()
                status = prober.status(job)
                elapsed = time.perf_counter() - start
                state = status["state"]
                if state not in ("queued", "running"):
                    break
                phase = ("queued" if state == "queued" else
                         "training" if status["step"] < status["total"] else "finishing")  # turntable, then export
                phases[phase].append(elapsed)
                if phase == "finishing" and export_started is None:
                    export_started = time.monotonic()
                if export_started is not None and time.monotonic() - export_started > export_seconds:
                    break
                time.sleep(0.05)
            info_start = time.perf_counter()
            prober.info()
            info_ms = 1000 * (time.perf_counter() - info_start)
            prober.close()
            watcher.close()
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the server and its worker process
            process.wait(60)
    return {"mode": "latency", "root": str(root), "serve_args": list(serve_args), "job": {**LATENCY_JOB, **largest_export()},
            "final_state": state, "events_seen": events,
            "status_latency": {name: summary_ms(values) for name, values in phases.items()},
            "all_running": summary_ms(phases["training"] + phases["finishing"]),
            "seconds_measured_in_export": None if export_started is None else time.monotonic() - export_started,
            "info_after_ms": info_ms}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-flood":
        serve_flood(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("real", "flood", "both", "latency"), default="both")
    parser.add_argument("--export-seconds", type=float, default=60.0,
                        help="latency mode: seconds of the export to measure (default %(default)s)")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="latency mode: the checkout whose server is measured (default this one)")
    parser.add_argument("--serve-args", default="", help='latency mode: more serve options, e.g. "--worker-nice 5"')
    parser.add_argument("--seconds", type=float, default=20.0, help="watching time per phase")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "server.json")
    args = parser.parse_args()
    if args.mode == "latency":
        result = command_latency(args.export_seconds, args.root.resolve(), tuple(args.serve_args.split()))
        out = args.out.with_name("server_latency.json") if args.out.name == "server.json" else args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        print(f"written to {out}")
        return
    results = [run(mode, args.seconds, args.clients) for mode in (("real", "flood") if args.mode == "both"
                                                                   else (args.mode,))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for result in results:
        print(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
