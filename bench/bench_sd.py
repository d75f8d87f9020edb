"""Steps/s and peak VRAM of each method on Stable Diffusion, at DreamFusion-SD settings.

The prior is a random-weight SD 2.1-base (real UNet, VAE and text-encoder shapes from
backend/priors/sd_random.py, nothing downloaded): speed and memory do not depend on the weights.
Each step is what the training loop does on the prior side: a 64x64 render -> encode (VAE at 512, with
gradient) -> the method's gradient (its UNet calls) -> backward into the render -> Adam. The render is a
learnable image by default, so the numbers are the prior + method cost alone; --nerf renders the real
hash-grid NeRF instead (the whole step).

The timed steps are spread evenly over a --max-steps run, because SDI's cost falls with t (10 inversion
calls at the start, 4 at t = 250) and FSD's and SDI's t follow the step.

    python bench/bench_sd.py                      # CUDA: SD 2.1-base size; CPU: the tiny config
    python bench/bench_sd.py --size tiny --device cpu --steps 5 --threads 1
    python bench/bench_sd.py --json bench/results/sd_h100.json --perp-neg
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
from backend.methods import METHODS, gradient_loss, make_method  # noqa: E402
from backend.priors.base import View  # noqa: E402
from backend.priors.sd_random import SIZES, random_components  # noqa: E402
from backend.priors.stable_diffusion import StableDiffusionPrior  # noqa: E402

PROMPT = "a DSLR photo of a hamburger"


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="sd21-base" if cuda else "tiny",
                        help="model shapes (default: sd21-base on CUDA, tiny on the CPU)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (CUDA kernels, caches)")
    parser.add_argument("--max-steps", type=int, default=10000, help="the run the timed steps are spread over")
    parser.add_argument("--resolution", type=int, default=64, help="render size (DreamFusion-SD: 64)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--latent-mode", choices=("vae", "rgb"), default="vae")
    parser.add_argument("--dtype", choices=("auto", "float16", "float32"), default="auto")
    parser.add_argument("--perp-neg", action="store_true")
    parser.add_argument("--attention-slicing", action="store_true")
    parser.add_argument("--nerf", action="store_true", help="render the real NeRF instead of a learnable image")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch (on a busy CPU, 1 is steadier)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def build_prior(args) -> StableDiffusionPrior:
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    return StableDiffusionPrior(**random_components(args.size), device=args.device, dtype=dtype,
                                latent_mode=args.latent_mode, perp_neg=args.perp_neg,
                                attention_slicing=args.attention_slicing, model_id=f"random {args.size}")


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
        return out.rgb.permute(0, 3, 1, 2), view, out.orientation_loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_method(name: str, prior: StableDiffusionPrior, args) -> dict:
    device = prior.device
    method = make_method(name, max_steps=args.max_steps, seed=0)
    prior.set_prompts(PROMPT, method.default_negative, view_dependent=True)
    method.setup(prior)
    render = (NeRFRender if args.nerf else ImageRender)(args, device)
    generator = torch.Generator().manual_seed(0)
    total = args.warmup + args.steps
    # spread over the run; the warm-up steps repeat the first timed ones
    schedule = [round(i * (args.max_steps - 1) / max(args.steps - 1, 1)) for i in range(args.steps)]
    schedule = schedule[:args.warmup] + schedule
    unet_calls = []
    hook = prior.unet.register_forward_hook(lambda *_: unet_calls.append(1))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i, step in enumerate(schedule[:total]):
        if i == args.warmup:
            unet_calls.clear()
        synchronize(device)
        start = time.perf_counter()
        cameras = sample_cameras(args.batch, args.resolution, args.resolution, generator).to(device)
        lights = sample_light_positions(cameras, generator)
        rgb, view, extra_loss = render(cameras, lights)
        x = prior.encode(rgb)
        out = method.gradient(x.detach(), step, view)
        render.optimizer.zero_grad(set_to_none=True)
        (gradient_loss(x, out.grad.to(x.dtype)) + extra_loss).backward()
        render.optimizer.step()
        synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    hook.remove()
    median = statistics.median(times)
    result = {"method": name, "steps_per_s": 1.0 / median, "median_step_ms": 1000.0 * median,
              "mean_step_ms": 1000.0 * statistics.fmean(times), "unet_calls_per_step": len(unet_calls) / args.steps}
    if device.type == "cuda":
        result["peak_vram_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    prior = build_prior(args)
    setup_s = time.perf_counter() - start
    weights_mb = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "size": args.size, "dtype": str(prior.dtype), "latent_mode": args.latent_mode,
            "resolution": args.resolution, "batch": args.batch, "perp_neg": args.perp_neg, "nerf": args.nerf,
            "timed_steps": args.steps, "spread_over_steps": args.max_steps, "build_s": setup_s,
            "weights_vram_mb": weights_mb}
    print(json.dumps(info))
    results = []
    for name in args.methods.split(","):
        result = bench_method(name.strip(), prior, args)
        results.append(result)
        print(f"{result['method']:>5}: {result['steps_per_s']:7.2f} steps/s  median {result['median_step_ms']:8.1f} ms"
              f"  UNet calls/step {result['unet_calls_per_step']:5.2f}"
              + (f"  peak VRAM {result['peak_vram_mb']:8.0f} MB" if "peak_vram_mb" in result else ""), flush=True)
    by_name = {r["method"]: r for r in results}
    if "sds" in by_name and "sdi" in by_name:
        ratio = by_name["sdi"]["median_step_ms"] / by_name["sds"]["median_step_ms"]
        info["sdi_over_sds_time"] = ratio
        line = f"SDI / SDS: {ratio:.2f}x time per step"
        if "peak_vram_mb" in by_name["sds"]:
            info["sdi_over_sds_vram"] = by_name["sdi"]["peak_vram_mb"] / by_name["sds"]["peak_vram_mb"]
            line += f", {info['sdi_over_sds_vram']:.2f}x peak VRAM"
        print(line)
    report = {"info": info, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
