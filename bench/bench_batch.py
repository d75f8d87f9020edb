"""Batch throughput on this machine: the same batch in-process, on a local Ray with 1 worker and with
2 workers, each through the real command line (`python -m backend batch`).

    python bench/bench_batch.py                       # 2 prompts x 2 seeds, tiny preset, 20 steps
    python bench/bench_batch.py --steps 40 --seeds 3
    python bench/bench_batch.py --score --steps 60 --seeds 4   # does the prior's loss rank seeds as IoU does?

Per mode: items per hour (finished items / the command's wall time, start-up included), the one-off
start-up (Ray itself, then the workers importing torch), the median item time on its worker, and
the per-item overhead the driver sees beyond the worker's own time (scheduling, retries bookkeeping,
result transfer). --score instead runs a batch on the shapes prior and compares, per prompt, the
seed ranking by the prior's denoising loss (backend/batch/score.py, what --keep-best uses on Stable
Diffusion) with the ranking by ground-truth IoU. Numbers are measured, never asserted; on a shared
CPU they are noisy. Results go to bench/out/batch.json (--score: bench/out/batch_score.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"
PROMPTS = ("a red cube", "a blue sphere")
MODES = {"in-process": [], "in-process-1t": [], "ray-1": ["--ray", "local", "--workers", "1"],
         "ray-2": ["--ray", "local", "--workers", "2"]}
# in-process-1t: in-process with one torch thread (OMP_NUM_THREADS=1), as each of 2 Ray workers has here


def measure(mode: str, args, folder: Path) -> dict:
    spec = folder / "spec.txt"
    spec.write_text("\n".join(PROMPTS) + "\n")
    out = folder / mode
    command = [sys.executable, "-m", "backend", "batch", str(spec), "--out", str(out), "--preset", "tiny",
               "--steps", str(args.steps), "--seeds", str(args.seeds), "--preview-every", "0", "--no-progress",
               *MODES[mode]]
    started = time.perf_counter()
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if mode.endswith("-1t") else {})}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-2000:]}")
    index = json.loads((out / "batch.json").read_text())
    items = [r for r in index["items"] if r["state"] == "done"]
    item_s = [r["wall_s"] for r in items]
    return {"mode": mode, "items": len(items), "command_s": wall, "items_per_hour": len(items) / wall * 3600.0,
            "startup_s": index.get("ray_start_s", 0.0) + index.get("workers_ready_s", 0.0),
            "ray_start_s": index.get("ray_start_s"), "workers_ready_s": index.get("workers_ready_s"),
            "median_item_s": statistics.median(item_s),
            "median_train_s": statistics.median(r["train_s"] for r in items),
            "median_overhead_s": statistics.median(r["driver_s"] - r["wall_s"] for r in items),
            "first_prior_load_s": max(r["prior_load_s"] for r in items),
            "reused_prior_load_s": statistics.median([r["prior_load_s"] for r in items if r["prior_reused"]] or [0.0]),
            "worker_processes": index.get("worker_processes"),
            "per_item": [{k: r[k] for k in ("id", "wall_s", "train_s", "driver_s", "prior_reused")} for r in items]}


def spearman(a: list[float], b: list[float]) -> float:
    rank = lambda xs: [sorted(xs).index(x) for x in xs]  # noqa: E731  (no ties in practice)
    ra, rb = rank(a), rank(b)
    n = len(a)
    return 1.0 - 6.0 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))


def score_check(args, folder: Path) -> dict:
    """Per prompt: Spearman correlation of -prior_loss with IoU over the seeds, and whether the
    lowest-loss seed is the highest-IoU one."""
    import torch

    from backend.batch.score import prior_score
    from backend.checkpoint import load_model
    from backend.priors.shapes import ShapesPrior

    prompts = ("a red cube", "a yellow cylinder", "a purple torus")
    spec = folder / "spec.txt"
    spec.write_text("\n".join(prompts) + "\n")
    out = folder / "score"
    command = [sys.executable, "-m", "backend", "batch", str(spec), "--out", str(out), "--preset", "tiny",
               "--steps", str(args.steps), "--seeds", str(args.seeds), "--preview-every", "0", "--no-progress",
               "--no-export", "--ray", "local", "--workers", "2"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env={**os.environ})
    torch.set_num_threads(1)
    items = [r for r in json.loads((out / "batch.json").read_text())["items"] if r["state"] == "done"]
    rows = {}
    for prompt in prompts:
        group = [r for r in items if r["prompt"] == prompt]
        prior = ShapesPrior(resolution=group[0]["settings"]["resolution"])
        prior.set_prompts(prompt)
        iou = [r["metrics"]["volume_iou"] for r in group]
        scores = [prior_score(load_model(out / r["id"])[0], prior, r["settings"]["resolution"]) for r in group]
        loss = [score["prior_loss"] for score in scores]
        rows[prompt] = {"iou": iou, "prior_loss": loss, "coverage": [score["coverage"] for score in scores],
                        "spearman": spearman([-x for x in loss], iou),
                        "best_agrees": iou.index(max(iou)) == loss.index(min(loss))}
        print(prompt, json.dumps(rows[prompt]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--score", action="store_true", help="compare the prior-loss ranking with the IoU ranking")
    args = parser.parse_args()
    if args.score:
        with tempfile.TemporaryDirectory() as folder:
            rows = score_check(args, Path(folder))
        OUT.mkdir(exist_ok=True)
        (OUT / "batch_score.json").write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "prompts": rows},
                                                         indent=1))
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.modes.split(","):
            rows.append(measure(mode, args, Path(folder)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{len(PROMPTS)} prompts x {args.seeds} seeds, tiny preset, {args.steps} steps, {os.cpu_count()} CPUs\n")
    print("| mode | items/hour | start-up s | median item s (train s) | per-item overhead s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['items_per_hour']:.0f} | {r['startup_s']:.1f} | {r['median_item_s']:.1f} "
              f"({r['median_train_s']:.1f}) | {r['median_overhead_s']:.3f} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "batch.json").write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
