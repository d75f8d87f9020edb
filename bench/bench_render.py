"""NeRF render cost on this machine: one 64x64 render of the initial blob, forward + backward.

Prints, for each max_samples_per_ray asked for, with and without occupancy skipping: the median
wall time of forward and of forward+backward over --repeats renders (and the process CPU time, which
other jobs on the machine disturb less), samples evaluated with gradients, samples per ray (all rays
and rays that hit something), and one Adam step over the field's parameters (the rest of a training
step's NeRF cost). Training mode, so the sample positions are jittered per ray as when training.

    python bench/bench_render.py
    python bench/bench_render.py --samples 512 256 128 --threads 1 --repeats 10 --no-mmap

Two things of this machine (a 2-core VM) dominate the numbers besides the work itself: other jobs
on the other core (with 2 threads every parallel op may wait for it; the load average is printed),
and glibc serving allocations over 32 MB with fresh mmaps whose page faults are slow here.
--no-mmap turns that off for the process (mallopt, as MALLOC_MMAP_MAX_=0 would).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.cameras import front_camera  # noqa: E402
from backend.losses import orientation_loss  # noqa: E402
from backend.nerf import NeRFModel, NeRFSettings  # noqa: E402


def measure(model: NeRFModel, repeats: int, size: int) -> dict:
    camera = front_camera(size, size)
    light = camera.positions * 1.5
    optimizer = torch.optim.Adam(model.field_parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-15)
    forward, total, cpu, adam = [], [], [], []
    for _ in range(repeats + 1):                       # the first is a warm-up
        wall, process = time.perf_counter(), time.process_time()
        out = model.render(camera, "lambertian", light)
        forward.append(time.perf_counter() - wall)
        ((out.rgb - 0.5) ** 2).mean().add(orientation_loss(out)).backward()
        total.append(time.perf_counter() - wall)
        cpu.append(time.process_time() - process)
        start = time.perf_counter()
        optimizer.step()
        adam.append(time.perf_counter() - start)
        optimizer.zero_grad(set_to_none=True)
    hit = int((out.opacity > 1e-4).sum())
    median = lambda xs: statistics.median(xs[1:])  # noqa: E731
    return dict(forward=median(forward), total=median(total), cpu=median(cpu), adam=median(adam),
                samples=out.num_samples, per_ray=out.num_samples / (size * size), per_hit_ray=out.num_samples / max(hit, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[512, 256], help="max_samples_per_ray values")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--no-mmap", action="store_true", help="keep big allocations on the heap (glibc)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.no_mmap:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)                 # M_MMAP_MAX: no mmap-backed allocations
        libc.mallopt(-1, 1 << 30)           # M_TRIM_THRESHOLD: keep freed heap memory for reuse
    print(f"{args.size}x{args.size} render of the initial blob, {args.threads} threads, median of {args.repeats}, "
          f"mmap {'off' if args.no_mmap else 'on'}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'samples/ray':>11} {'skipping':>8} {'fwd s':>7} {'fwd+bwd s':>9} {'cpu s':>7} {'adam s':>7} "
          f"{'samples':>8} {'per ray':>8} {'per hit':>8}")
    for max_samples in args.samples:
        for skipping in (True, False):
            torch.manual_seed(0)
            settings = replace(NeRFSettings(), max_samples_per_ray=max_samples, occupancy_skipping=skipping)
            r = measure(NeRFModel(settings), args.repeats, args.size)
            print(f"{max_samples:>11} {'on' if skipping else 'off':>8} {r['forward']:7.3f} {r['total']:9.3f} "
                  f"{r['cpu']:7.3f} {r['adam']:7.3f} {r['samples']:8d} {r['per_ray']:8.1f} {r['per_hit_ray']:8.1f}")


if __name__ == "__main__":
    main()
