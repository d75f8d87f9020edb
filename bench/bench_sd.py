"""Steps/s, UNet calls per step and peak VRAM of each method on Stable Diffusion, beside a plain
threestudio-style SDS step (bench/plain_sds.py) timed in the same process, with CUDA graphs on and off.

The prior is a random-weight SD 2.1-base (real UNet, VAE and text-encoder shapes from
backend/priors/sd_random.py, nothing downloaded): speed and memory do not depend on the weights.
Each step is what the training loop does on the prior side: a 64x64 render -> encode (VAE at 512, with
gradient) -> the method's gradient (its UNet calls) -> backward into the render -> Adam. The render is a
learnable image by default, so the numbers are the prior + method cost alone; --nerf renders the real
hash-grid NeRF instead (the whole step); --render image,nerf does both. `plain` is the reference step on the same render.

The timed steps are spread evenly over a --max-steps run, because SDI's cost falls with t (10 inversion
calls at the start, 4 at t = 250) and FSD's and SDI's t follow the step. --components also times the
UNet call and the VAE encoder's forward + backward alone (CUDA events), graphs on/off, channels-last on/off.

    python bench/bench_sd.py                      # CUDA: SD 2.1-base size; CPU: the tiny config
    python bench/bench_sd.py --size tiny --device cpu --steps 5 --threads 1
    python bench/bench_sd.py --graphs both --components --json bench/results/sd_h200.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.cameras import sample_cameras, sample_light_positions  # noqa: E402
from backend.losses import orientation_loss  # noqa: E402
from backend.methods import METHOD_CLASSES, gradient_loss, make_method  # noqa: E402
from backend.priors.base import TEXT, UNCOND, View  # noqa: E402
from backend.priors.sd_random import SIZES, random_components  # noqa: E402
from backend.priors.stable_diffusion import EMPTY, StableDiffusionPrior  # noqa: E402
from bench.plain_sds import PlainSDS  # noqa: E402

PROMPT = "a DSLR photo of a hamburger"
PLAIN = "plain"  # the reference step's name in --methods and the results


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="sd21-base" if cuda else "tiny",
                        help="model shapes (default: sd21-base on CUDA, tiny on the CPU)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--methods", default=",".join([PLAIN, *METHOD_CLASSES]),
                        help=f"comma-separated, '{PLAIN}' for the reference step (default: it and every method)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (graph capture, kernels, caches)")
    parser.add_argument("--max-steps", type=int, default=10000, help="the run the timed steps are spread over")
    parser.add_argument("--resolution", type=int, default=64, help="render size (DreamFusion-SD: 64)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--latent-mode", choices=("vae", "rgb"), default="vae")
    parser.add_argument("--dtype", choices=("auto", "float16", "float32"), default="auto")
    parser.add_argument("--graphs", choices=("on", "off", "both"), default="on", help="CUDA graphs for the prior")
    parser.add_argument("--vae-channels-last", action="store_true", help="run the VAE channels-last")
    parser.add_argument("--perp-neg", action="store_true")
    parser.add_argument("--attention-slicing", action="store_true")
    parser.add_argument("--render", default="image", help="comma-separated: image (a learnable image, the prior "
                        "side alone) and/or nerf (the real NeRF: the whole step)")
    parser.add_argument("--nerf", action="store_const", const="nerf", dest="render", help="same as --render nerf")
    parser.add_argument("--components", action="store_true",
                        help="also time the UNet call and the VAE encoder forward+backward alone")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch (on a busy CPU, 1 is steadier)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def build_prior(args) -> StableDiffusionPrior:
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    return StableDiffusionPrior(**random_components(args.size), device=args.device, dtype=dtype,
                                latent_mode=args.latent_mode, perp_neg=args.perp_neg,
                                attention_slicing=args.attention_slicing, vae_channels_last=args.vae_channels_last,
                                model_id=f"random {args.size}")


class ImageRender:
    """A learnable image standing in for the NeRF: the prior side of a step, nothing else."""

    def __init__(self, args, device):
        self.logits = torch.zeros(args.batch, 3, args.resolution, args.resolution, device=device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=0.01, betas=(0.9, 0.99), eps=1e-15)

    def __call__(self, cameras, lights):
        rgb = torch.sigmoid(self.logits)
        b, _, h, w = rgb.shape
        view = View(cameras, "lambertian", lights, torch.ones_like(rgb), torch.ones(b, 1, h, w, device=rgb.device))
        return rgb, view, torch.zeros((), device=rgb.device)


class NeRFRender:
    """The hash-grid NeRF with its DreamFusion-SD defaults (backend.nerf), as the training loop renders it."""

    def __init__(self, args, device):
        from backend.nerf import NeRFModel, NeRFSettings
        self.model = NeRFModel(NeRFSettings(), device).to(device)
        self.optimizer = torch.optim.Adam([
            {"params": list(self.model.field_parameters()), "lr": 0.01},
            {"params": list(self.model.background_parameters()), "lr": 0.001}], betas=(0.9, 0.99), eps=1e-15)
        self.calls = 0

    def __call__(self, cameras, lights):
        if self.calls % 16 == 0:
            self.model.update_occupancy()
        self.calls += 1
        out = self.model.render(cameras, "lambertian", lights)
        view = View(cameras, "lambertian", lights, out.background.permute(0, 3, 1, 2).detach(),
                    out.opacity.permute(0, 3, 1, 2).detach())
        return out.rgb.permute(0, 3, 1, 2), view, orientation_loss(out)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def graph_settings(args, allowed: tuple[bool, bool]) -> list[bool]:
    """Graphs on and/or off as asked; only off where the prior cannot capture (CPU, memory options)."""
    if not any(allowed):
        return [False]
    return [True, False] if args.graphs == "both" else [args.graphs == "on"]


def set_graphs(prior: StableDiffusionPrior, on: bool, allowed: tuple[bool, bool]) -> None:
    """Graphs on or off for both graphed calls (within what the prior allows), dropping captured ones."""
    for graphed, ok in zip((prior.unet_graphs, prior.vae_graphs), allowed):
        graphed.reset()
        graphed.enabled = on and ok


def plain_step(prior: StableDiffusionPrior) -> PlainSDS:
    embeddings = torch.stack([prior._embedding(PROMPT), prior._embedding(EMPTY)])
    return PlainSDS(prior.unet, prior.vae, embeddings, prior.schedule.alphas_cumprod,
                    resolution=prior.render_resolution)


def bench_method(name: str, prior: StableDiffusionPrior, args, render_kind: str) -> dict:
    device = prior.device
    plain = name == PLAIN
    method = None if plain else make_method(name, max_steps=args.max_steps, seed=0)
    prior.set_prompts(PROMPT, None if plain else method.default_negative, view_dependent=True)
    if plain:
        reference = plain_step(prior)
    else:
        method.setup(prior)
    render = (NeRFRender if render_kind == "nerf" else ImageRender)(args, device)
    generator = torch.Generator().manual_seed(0)
    total = args.warmup + args.steps
    # spread over the run; the warm-up steps repeat the first timed ones
    schedule = [round(i * (args.max_steps - 1) / max(args.steps - 1, 1)) for i in range(args.steps)]
    schedule = schedule[:args.warmup] + schedule
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, calls_before = [], 0
    for i, step in enumerate(schedule[:total]):
        if i == args.warmup:
            calls_before = reference.unet_calls if plain else prior.unet_calls
        synchronize(device)
        start = time.perf_counter()
        cameras = sample_cameras(args.batch, args.resolution, args.resolution, generator).to(device)
        lights = sample_light_positions(cameras, generator)
        rgb, view, extra_loss = render(cameras, lights)
        render.optimizer.zero_grad(set_to_none=True)
        if plain:
            loss = reference.loss(rgb)
        else:
            x = prior.encode(rgb)
            out = method.gradient(x.detach(), step, view)
            loss = gradient_loss(x, out.grad.to(x.dtype))
        (loss + extra_loss).backward()
        render.optimizer.step()
        synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    calls = (reference.unet_calls if plain else prior.unet_calls) - calls_before
    median = statistics.median(times)
    result = {"method": name, "graphs": prior.unet_graphs.enabled and not plain,
              "vae_channels_last": prior.vae_channels_last, "render": render_kind, "steps_per_s": 1.0 / median,
              "median_step_ms": 1000.0 * median, "mean_step_ms": 1000.0 * statistics.fmean(times),
              "unet_calls_per_step": calls / args.steps}
    if device.type == "cuda":
        result["peak_vram_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    return result


def median_ms(fn, device: torch.device, repeat: int = 20, warmup: int = 3) -> float:
    """Median time of fn() in ms: CUDA events on CUDA, the host clock on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def bench_components(prior: StableDiffusionPrior, args, allowed: tuple[bool, bool], repeat: int) -> list[dict]:
    """The UNet call (text + empty prompt, batch 2B) and the VAE encoder forward + backward alone."""
    device, rows = prior.device, []
    prior.set_prompts(PROMPT, view_dependent=False)
    view = View(sample_cameras(args.batch, 8, 8, torch.Generator().manual_seed(0)).to(device), "albedo", torch.zeros(args.batch, 3, device=device),
                torch.ones(args.batch, 3, 8, 8, device=device), torch.ones(args.batch, 1, 8, 8, device=device))
    z = torch.randn(args.batch, *prior.latent_shape, device=device)
    t = torch.full((args.batch,), 500, device=device)
    rgb = torch.rand(args.batch, 3, args.resolution, args.resolution, device=device)
    direction = torch.randn(args.batch, *prior.latent_shape, device=device)

    def vae_step():
        render = rgb.clone().requires_grad_(True)
        (prior.encode(render) * direction).sum().backward()

    for graphs in graph_settings(args, allowed):
        set_graphs(prior, graphs, allowed)
        rows.append({"component": "unet_call", "graphs": prior.unet_graphs.enabled, "vae_channels_last": None,
                     "ms": median_ms(lambda: prior.predict_noise(z, t, (TEXT, UNCOND), view), device, repeat)})
        if prior.latent_mode != "vae":
            continue
        for channels_last in ([False, True] if device.type == "cuda" else [False]):
            prior.set_vae_channels_last(channels_last)
            rows.append({"component": "vae_encode_fwd_bwd", "graphs": prior.vae_graphs.enabled,
                         "vae_channels_last": channels_last, "ms": median_ms(vae_step, device, repeat)})
    prior.set_vae_channels_last(args.vae_channels_last)
    for row in rows:
        print(f"{row['component']:>18}  graphs {'on ' if row['graphs'] else 'off'}  channels-last "
              f"{row['vae_channels_last']!s:>5}: {row['ms']:8.2f} ms", flush=True)
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    prior = build_prior(args)
    setup_s = time.perf_counter() - start
    allowed = (prior.unet_graphs.enabled, prior.vae_graphs.enabled)
    weights_mb = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "size": args.size, "dtype": str(prior.dtype), "latent_mode": args.latent_mode,
            "resolution": args.resolution, "batch": args.batch, "perp_neg": args.perp_neg, "render": args.render,
            "timed_steps": args.steps, "spread_over_steps": args.max_steps, "build_s": setup_s,
            "weights_vram_mb": weights_mb, "graphs_possible": allowed[0]}
    print(json.dumps(info))
    results = []
    report = {"info": info, "results": results}

    def save() -> None:  # after every result, so a run cut short still leaves what it measured
        info.update(summary(results))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))

    if args.components:  # first: quick, and they decide the VAE layout
        report["components"] = bench_components(prior, args, allowed, repeat=max(args.steps, 5))
        save()
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    for render_kind in [r.strip() for r in args.render.split(",")]:
        for graphs in graph_settings(args, allowed):
            set_graphs(prior, graphs, allowed)
            for name in names:
                if name == PLAIN and any(r["method"] == PLAIN and r["render"] == render_kind for r in results):
                    continue  # the reference does not use the prior's graphs: once is enough
                result = bench_method(name, prior, args, render_kind)
                results.append(result)
                save()
                print(f"{render_kind:>5} {result['method']:>5} graphs {'on ' if result['graphs'] else 'off'}: "
                      f"{result['steps_per_s']:7.2f} steps/s  median {result['median_step_ms']:8.1f} ms"
                      f"  UNet calls/step {result['unet_calls_per_step']:5.2f}"
                      + (f"  peak VRAM {result['peak_vram_mb']:8.0f} MB" if "peak_vram_mb" in result else ""),
                      flush=True)
    for key, value in summary(results).items():
        print(f"{key}: {value:.2f}")
    return report


def summary(results: list[dict]) -> dict:
    """The ratios the targets are written in, per render kind: plain / method time (speed-up over the
    reference, > 1 is faster) and SDI / SDS time, with the prior's graphs on where they were measured."""
    out = {}
    for kind in dict.fromkeys(r["render"] for r in results):
        best = {}
        for r in results:  # per method, the graphs-on row if there is one
            if r["render"] == kind and (r["method"] not in best or (r["graphs"] and not best[r["method"]]["graphs"])):
                best[r["method"]] = r
        if PLAIN in best:
            for name, r in best.items():
                if name != PLAIN:
                    out[f"{kind}_speedup_{name}_over_plain"] = best[PLAIN]["median_step_ms"] / r["median_step_ms"]
        if "sds" in best and "sdi" in best:
            out[f"{kind}_sdi_over_sds_time"] = best["sdi"]["median_step_ms"] / best["sds"]["median_step_ms"]
    return out


if __name__ == "__main__":
    main()
