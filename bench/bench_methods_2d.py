"""What each method reaches in 2D, measured against the exact Gaussian-mixture prior.

Every variant distils one 3x16x16 image for the prompt "class 0" from each seed (the method's own 2D
optimiser, backend/image.py OPTIMIZERS_2D), and DDIM (CFG 7.5, 50 steps) samples from the noise FSD
uses for that seed. Per variant, over the seeds (backend/priors/gaussian_mixture.py):
    detail      energy along the class's directions / its expected value: true sample 1, class mean 0
    off         distance from the class's subspace: true sample 0
    spread      mean distance between the results of different seeds (true samples: "true" row)
    class       fraction of seeds that end in the prompt's class
    to DDIM     mean distance to the DDIM sample from the same noise
    max |x|     the largest pixel value reached (an explosion shows here)
Writes bench_methods_2d.json, bench_methods_2d.md and bench_methods_2d.png (rows = variants,
columns = seeds) to --out. docs/methods.md holds the measured table and its reading.

    python bench/bench_methods_2d.py                       # 6 seeds, 500 steps (a few minutes)
    python bench/bench_methods_2d.py --seeds 2 --steps 200 --only sdi fsd
    python bench/bench_methods_2d.py --legacy              # every method with Adam lr 0.03, as the
                                                           # 2D loop did before (see docs/methods.md)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.image import distill_image, image_view  # noqa: E402
from backend.methods import make_method  # noqa: E402
from backend.methods.ddim import ddim_sample  # noqa: E402
from backend.pictures import grid, save_png  # noqa: E402
from backend.priors.base import NFSD_NEGATIVE_PROMPT  # noqa: E402
from backend.priors.gaussian_mixture import GaussianMixturePrior  # noqa: E402

PROMPT = "class 0"
# name -> (method, cfg, options, negative prompt, 2D optimiser (None: the method's own), Adam lr)
VARIANTS: dict[str, tuple] = {
    "sds-7.5": ("sds", 7.5, {}, None, None, None),
    "sds-100": ("sds", 100.0, {}, None, None, None),
    "nfsd (neg: mixture)": ("nfsd", None, {}, "", None, None),
    "nfsd (neg: blurry)": ("nfsd", None, {}, NFSD_NEGATIVE_PROMPT, None, None),
    "nfsd (neg: class 1)": ("nfsd", None, {}, "class 1", None, None),
    "sdi": ("sdi", None, {}, None, None, None),
    "sdi 8.5/-6.5": ("sdi", 8.5, {"inversion_cfg": -6.5}, None, None, None),
    "sdi lr 0.1": ("sdi", None, {}, None, "adam", 0.1),
    "fsd": ("fsd", None, {}, None, None, None),
    "fsd adam 0.03": ("fsd", None, {}, None, "adam", 0.03),
}


def run_variant(prior, view, spec, steps, seed, legacy):
    method_name, cfg, options, negative, optimizer, lr = spec
    method = make_method(method_name, cfg, options, max_steps=steps, seed=seed)
    prior.set_prompts(PROMPT, negative, view_dependent=False)
    if legacy:  # the 2D loop before this benchmark: Adam (lr 0.03 unless given) for every method
        return distill_image(prior, method, steps, view, lr or 0.03)
    return distill_image(prior, method, steps, view, lr, optimizer=optimizer)


def ddim_from_fsd_noise(prior, view, seed, steps=50):
    fsd = make_method("fsd", seed=seed)
    fsd.setup(prior)
    x_T = fsd.noise(torch.zeros(1, *prior.latent_shape), view)
    prior.set_prompts(PROMPT, None, view_dependent=False)
    return ddim_sample(prior, x_T, view, steps=steps, cfg=7.5)


def mean_pairwise(xs: torch.Tensor) -> float:
    return float(torch.pdist(xs.flatten(1).double()).mean()) if len(xs) > 1 else float("nan")


def summarize(prior, xs: torch.Tensor, ddim: torch.Tensor | None, seconds: float) -> dict:
    finite = torch.isfinite(xs.flatten(1)).all(1)
    return {
        "detail": float(prior.detail(xs).mean()), "off": float(prior.off_manifold(xs).mean()),
        "spread": mean_pairwise(xs), "class": float((prior.class_reached(xs) == prior.text_class).double().mean()),
        "to_ddim": None if ddim is None else float((xs - ddim).flatten(1).norm(dim=1).mean()),
        "max_abs": float(xs.abs().max()), "finite": bool(finite.all()), "seconds_per_run": seconds}


def markdown(rows: dict[str, dict], args) -> str:
    fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
    lines = [f"Gaussian-mixture prior, prompt \"{PROMPT}\", {args.seeds} seeds, {args.steps} steps"
             f"{', legacy loop (Adam lr 0.03 for all)' if args.legacy else ''}.", "",
             "| variant | detail | off-manifold | seed spread | class reached | to DDIM | max abs | s/run |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {fmt(r['detail'])} | {fmt(r['off'])} | {fmt(r['spread'])} | "
                     f"{fmt(r['class'], '{:.0%}')} | {fmt(r['to_ddim'])} | {fmt(r['max_abs'])} | "
                     f"{fmt(r['seconds_per_run'], '{:.1f}')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--only", nargs="*", help="variants whose name starts with one of these")
    parser.add_argument("--legacy", action="store_true", help="Adam lr 0.03 for every method (the old loop)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/bench_methods_2d"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prior = GaussianMixturePrior()
    view = image_view(prior)
    variants = {k: v for k, v in VARIANTS.items() if not args.only or any(k.startswith(o) for o in args.only)}

    prior.set_prompts(PROMPT)
    true = prior.sample(1000, generator=torch.Generator().manual_seed(1))
    rows = {"true samples": summarize(prior, true, None, 0.0)}
    ddim = torch.cat([ddim_from_fsd_noise(prior, view, seed) for seed in range(args.seeds)])
    rows["ddim"] = summarize(prior, ddim, ddim, 0.0)
    results = {"ddim": ddim}
    for name, spec in variants.items():
        start = time.perf_counter()
        xs = torch.cat([run_variant(prior, view, spec, args.steps, seed, args.legacy) for seed in range(args.seeds)])
        seconds = (time.perf_counter() - start) / args.seeds
        prior.set_prompts(PROMPT)
        rows[name] = summarize(prior, xs, ddim, seconds)
        results[name] = xs
        print(f"{name}: {rows[name]}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"prompt": PROMPT, "seeds": args.seeds, "steps": args.steps, "legacy": args.legacy,
            "threads": args.threads, "torch": torch.__version__}
    (args.out / "bench_methods_2d.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown(rows, args)
    (args.out / "bench_methods_2d.md").write_text(table)
    images, labels = [], []
    for name, xs in results.items():
        for seed, x in enumerate(xs):
            images.append(prior.decode(x[None])[0])
            labels.append(f"{name[:12]} d{float(prior.detail(x[None])):.2f} o{float(prior.off_manifold(x[None])):.1f}"
                          if seed == 0 else f"d{float(prior.detail(x[None])):.2f} o{float(prior.off_manifold(x[None])):.1f}")
    save_png(grid(images, labels, columns=args.seeds, scale=8), args.out / "bench_methods_2d.png")
    print(table)
    print(f"Wrote {args.out}/bench_methods_2d.{{json,md,png}}; median s/run "
          f"{statistics.median(r['seconds_per_run'] for r in rows.values()):.1f} (a shared 2-core machine: noisy)")


if __name__ == "__main__":
    main()
