"""The distillation loop: camera -> render -> method(prior) -> gradient on the render -> Adam step.

One function, `train`, used by the CLI, the Python API and the server. It reports through
`on_event` (backend.events), stops cleanly when `should_stop()` turns true (checkpoint written), and
writes into `out_dir`: previews/step_NNNNN.png, checkpoint.pt, turntable.png, report.json and the
exported mesh files.
"""
from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shared.version import __version__
from .cameras import sample_cameras, sample_light_positions, turntable_cameras
from .checkpoint import load_checkpoint, nerf_settings, save_checkpoint
from .config import GenerateConfig
from .devices import resolve_device
from .errors import UserError
from .fileio import write_atomic
from .events import CoarseMesh, EventCallback, Finished, Log, Preview, Progress, StopCheck, ignore_event, never_stop
from .methods import make_method
from .methods.base import gradient_loss
from .nerf import NeRFModel
from .pictures import grid, save_png, to_uint8
from .priors import Prior, View, load_prior
from .runtime import tune_allocator

MAX_BAD_STEPS = 20  # consecutive non-finite gradients before the run is abandoned


@dataclass
class TrainResult:
    out_dir: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    stopped: bool = False


def prepare_output(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    try:
        (out_dir / "previews").mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to output folder {out_dir} ({error.strerror}): "
                        "choose another folder with --out") from None
    return out_dir


def shading_for_step(step: int, config: GenerateConfig, generator: torch.Generator) -> str:
    """Albedo only while the shape forms, then lambertian or (with textureless_prob) textureless."""
    if step < config.albedo_steps:
        return "albedo"
    return "textureless" if torch.rand((), generator=generator).item() < config.textureless_prob else "lambertian"


def active_levels(step: int, config: GenerateConfig) -> int:
    """Progressive hash levels: hash_levels_start at first, one more every hash_levels_every steps
    after hash_levels_after."""
    extra = 0 if step < config.hash_levels_after else 1 + (step - config.hash_levels_after) // config.hash_levels_every
    return min(config.hash_levels, config.hash_levels_start + extra)


def orientation_weight(step: int, config: GenerateConfig) -> float:
    """Linear ramp lambda_orientation -> lambda_orientation_end over orientation_ramp_steps."""
    f = min(1.0, step / max(1, config.orientation_ramp_steps))
    return config.lambda_orientation + f * (config.lambda_orientation_end - config.lambda_orientation)


def augment_background(render, probability: float, generator: torch.Generator):
    """(rgb, background), both [B, H, W, 3]: the render as is, or, with `probability`, recomposited
    over a random solid colour (threestudio's random_aug), so the learned background cannot take
    on the object's colour and hide its silhouette from the prior (bench: cylinder IoU 0.16 -> 0.77)."""
    if torch.rand((), generator=generator).item() >= probability:
        return render.rgb, render.background
    background = torch.rand(3, generator=generator).to(render.rgb).expand_as(render.background)
    return render.rgb + (1.0 - render.opacity) * (background - render.background), background


def make_view(cameras, shading: str, lights: torch.Tensor, opacity: torch.Tensor, background: torch.Tensor) -> View:
    return View(cameras=cameras, shading=shading, light_positions=lights,
                background=background.permute(0, 3, 1, 2).detach(), opacity=opacity.permute(0, 3, 1, 2).detach())


@torch.no_grad()
def render_views(model: NeRFModel, n: int, resolution: int, device: torch.device, shading: str = "lambertian"):
    """n turntable views [n, H, W, 3], lit from the camera side."""
    cams = turntable_cameras(n, resolution, resolution, device=device)
    was_training = model.training
    model.eval()  # no sample jitter in pictures
    views = torch.cat([model.render(cams[i:i + 1], shading, cams.positions[i:i + 1] * 1.5).rgb for i in range(n)])
    model.train(was_training)
    return views


def train(config: GenerateConfig, out_dir: Path, on_event: EventCallback = ignore_event,
          should_stop: StopCheck = never_stop, prior: Prior | None = None, resume: bool = False) -> TrainResult:
    """Run (or resume) one text-to-3D distillation. See the module docstring."""
    config = config.validate().resolved()
    tune_allocator()
    out_dir = prepare_output(out_dir)
    device = resolve_device(config.device)
    checkpoint_path = out_dir / "checkpoint.pt"
    state = load_checkpoint(checkpoint_path, map_location=device) if resume else None
    if state is not None and state["config"]["prompt"] != config.prompt:
        raise UserError(f"the checkpoint in {out_dir} is for the prompt {state['config']['prompt']!r}: "
                        "resume with the same prompt, or use another --out")

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if prior is None:
        on_event(Log("info", f"loading prior {config.prior!r}"))
        prior = load_prior(config.prior, device, resolution=config.resolution, offline=config.offline,
                           options=config.prior_options)
    method = make_method(config.method, cfg=config.cfg, options=config.method_options, max_steps=config.steps,
                         seed=config.seed)
    negative = config.negative if config.negative is not None else getattr(method, "default_negative", None)
    prior.set_prompts(config.prompt, negative, config.view_dependent)
    method.setup(prior)

    model = NeRFModel(nerf_settings(config), device=device).to(device)
    optimizer = torch.optim.Adam([
        {"params": list(model.field_parameters()), "lr": config.lr},
        {"params": list(model.background_parameters()), "lr": config.background_lr},
    ], betas=(0.9, 0.99), eps=1e-15)
    start_step, elapsed_before = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        generator.set_state(state["generator"])
        start_step, elapsed_before = state["step"], state.get("elapsed_s", 0.0)
        on_event(Log("info", f"resumed from {checkpoint_path} at step {start_step}"))

    def checkpoint(step: int, elapsed: float) -> None:
        save_checkpoint(checkpoint_path, config=config.to_dict(), step=step, elapsed_s=elapsed,
                        model=model.state_dict(), optimizer=optimizer.state_dict(),
                        method=method.state_dict(), generator=generator.get_state())

    timings = {"render": [], "prior": [], "backward": [], "step": []}
    bad_steps, stopped, loss_value, t_value = 0, False, float("nan"), 0
    run_start = time.perf_counter()
    step = start_step
    for step in range(start_step, config.steps):
        if should_stop():
            stopped = True
            break
        t0 = time.perf_counter()
        model.set_active_levels(active_levels(step, config))
        if step % config.occupancy_every == 0:
            model.update_occupancy()

        cameras = sample_cameras(config.batch_size, config.resolution, config.resolution, generator).to(device)
        lights = sample_light_positions(cameras, generator)
        shading = shading_for_step(step, config, generator)
        render = model.render(cameras, shading, lights)
        rgb, background = augment_background(render, config.random_background_prob, generator)
        x = prior.encode(rgb.permute(0, 3, 1, 2))
        t1 = time.perf_counter()

        out = method.gradient(x.detach(), step, make_view(cameras, shading, lights, render.opacity, background))
        t2 = time.perf_counter()

        grad = out.grad.to(x.dtype)
        if not torch.isfinite(grad).all():
            bad_steps += 1
            optimizer.zero_grad(set_to_none=True)
            on_event(Log("warning", f"step {step}: non-finite gradient, step skipped ({bad_steps} in a row)"))
            if bad_steps >= MAX_BAD_STEPS:
                checkpoint(step, elapsed_before + time.perf_counter() - run_start)
                raise RuntimeError(f"training diverged: {bad_steps} steps in a row gave NaN/inf gradients. "
                                   "Lower --cfg or the learning rate, or change --seed, and start again")
            continue
        bad_steps = 0
        loss_sd = gradient_loss(x, grad)  # d loss / d x = g / B (METHODS.md)
        loss = loss_sd + orientation_weight(step, config) * render.orientation_loss
        if config.lambda_sparsity > 0:
            loss = loss + config.lambda_sparsity * torch.sqrt(render.opacity ** 2 + 0.01).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t3 = time.perf_counter()

        timings["render"].append(t1 - t0)
        timings["prior"].append(t2 - t1)
        timings["backward"].append(t3 - t2)
        timings["step"].append(t3 - t0)
        loss_value, t_value = float(loss_sd.detach()), out.t
        done = step + 1
        recent = timings["step"][-20:]
        it_per_s = len(recent) / max(sum(recent), 1e-9)
        on_event(Progress(step=done, total=config.steps, t=int(t_value), loss=loss_value, it_per_s=it_per_s,
                          eta_s=(config.steps - done) / it_per_s))
        if config.preview_every and (done % config.preview_every == 0 or done == config.steps):
            image = to_uint8(render_views(model, 1, config.resolution, device)[0])
            save_png(image, out_dir / "previews" / f"step_{done:05d}.png")
            on_event(Preview(step=done, image=image))
        if config.coarse_mesh_every and done % config.coarse_mesh_every == 0:
            from .export import coarse_mesh
            vertices, faces, colors = coarse_mesh(model, threshold=config.mesh_threshold)
            on_event(CoarseMesh(step=done, vertices=vertices, faces=faces, colors=colors))
        if config.checkpoint_every and done % config.checkpoint_every == 0:
            checkpoint(done, elapsed_before + time.perf_counter() - run_start)
    else:
        step = config.steps

    elapsed = elapsed_before + time.perf_counter() - run_start
    checkpoint(step, elapsed)
    result = TrainResult(out_dir=out_dir, stopped=stopped)
    result.outputs["checkpoint.pt"] = checkpoint_path
    if stopped:
        on_event(Log("info", f"stopped at step {step}; resume with --resume (checkpoint {checkpoint_path})"))
        return result

    model.eval()
    views = render_views(model, 8, config.resolution, device)
    result.outputs["turntable.png"] = save_png(grid(list(views), columns=4), out_dir / "turntable.png")
    export_stats: dict = {}
    if config.export_mesh:
        from .export import export_mesh
        try:
            exported = export_mesh(model, out_dir, resolution=config.mesh_resolution, face_budget=config.face_budget,
                                   texture_size=config.texture_size, smooth=config.mesh_smooth,
                                   threshold=config.mesh_threshold)
            result.outputs.update(exported.paths)
            export_stats = exported.stats
        except UserError as error:  # keep the run's other results; the mesh can be re-exported later
            export_stats = {"error": str(error)}
            on_event(Log("warning", f"mesh export failed: {error} Re-export with: python -m backend export "
                                    f"{checkpoint_path} --threshold LOWER"))
    result.report = build_report(config, prior, model, device, timings, elapsed, step, export_stats)
    report_path = write_atomic(out_dir / "report.json", json.dumps(result.report, indent=2, default=str))
    result.outputs["report.json"] = report_path
    on_event(Finished(outputs={k: str(v) for k, v in result.outputs.items()}))
    return result


def peak_memory_mb(device: torch.device) -> dict:
    peak = {"cpu_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def build_report(config, prior, model, device, timings, elapsed, steps_done, export_stats) -> dict:
    median = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    report = {
        "settings": config.to_dict(),
        "versions": {"distill3d": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "prior": prior.describe(),
        "steps_done": steps_done,
        "total_time_s": elapsed,
        "median_step_s": median(timings["step"]),
        "median_breakdown_s": {k: median(v) for k, v in timings.items() if k != "step"},
        "peak_memory": peak_memory_mb(device),
        "export": export_stats,
    }
    if hasattr(prior, "ground_truth"):
        report["ground_truth"] = ground_truth_metrics(model, prior.ground_truth(), config.mesh_threshold)
    return report


@torch.no_grad()
def ground_truth_metrics(model: NeRFModel, objects, threshold: float) -> dict:
    """For the exact prior: volume IoU of the field's occupancy against the best-matching prompt
    object, and the albedo error on that object's surface."""
    from .metrics import albedo_error, best_match

    device = next(model.parameters()).device
    density = lambda p: model.density(p.to(device))  # noqa: E731  (the metrics work on the CPU)
    albedo = lambda p: model.albedo(p.to(device))  # noqa: E731
    obj, iou = best_match(density, objects, threshold, 64, albedo_fn=albedo)
    error = albedo_error(albedo, obj)
    return {"object": obj.name, "volume_iou": float(iou), "albedo_error": float(error), "threshold": threshold,
            "candidates": len(objects)}
