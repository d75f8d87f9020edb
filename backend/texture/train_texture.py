"""Texture mode's loop: the distillation loop of backend/train.py with the geometry fixed to the artist's mesh.

Each step: random cameras and lights (as the NeRF's), one ray per pixel cast at the mesh, the texture
field queried at the hits and shaded, the background recomposited as in train.py, the prior and the method
give a gradient on the render, and Adam updates the texture field and the background. Events, stopping,
checkpoints and resume behave as in backend.train.train; at the end the texture is baked into the mesh's
UVs (bake.py) and report.json records the run, with the texture error against the true object on the
exact shapes prior (truth.py). docs/selection.md, "Texture mode".
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cameras import sample_cameras, sample_light_positions, turntable_cameras
from ..checkpoint import nerf_settings, save_checkpoint
from ..config import GenerateConfig
from ..devices import resolve_device
from ..errors import UserError
from ..events import EventCallback, Finished, Log, Preview, Progress, StopCheck, ignore_event, never_stop
from ..fileio import write_atomic
from ..finish import build_report, turntable_size
from ..methods import gradient_loss
from ..nan_guard import NaNGuard
from ..pictures import grid, save_png, to_uint8
from ..runtime import tune_allocator
from ..step_timer import StepTimer
from ..train import (READ_EVERY, TrainResult, active_levels, augment_background, make_optimizer, make_view,
                     prepare_output, prior_and_method, read_guard, resume_state)
from .bake import bake_texture
from .mesh_input import Fit, SourceMesh, fit, load_source_mesh
from .raycast import MeshRaycaster
from .texture_field import TextureModel

TURNTABLE_VIEWS = 8


@dataclass
class TextureRun:
    """Everything one texture run trains and saves."""
    config: GenerateConfig
    prior: object
    method: object
    model: TextureModel
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    device: torch.device
    checkpoint_path: Path
    start_step: int = 0
    elapsed_before: float = 0.0
    timings: dict | None = None   # StepTimer.seconds at the end of the loop
    elapsed: float = 0.0          # seconds trained, this run and the ones it resumed

    def checkpoint(self, step: int, elapsed: float) -> None:
        save_checkpoint(self.checkpoint_path, config=self.config.to_dict(), step=step, elapsed_s=elapsed,
                        model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                        method=self.method.state_dict(), generator=self.generator.get_state())


def texture_shading(step: int, config: GenerateConfig) -> str:
    """Albedo only for config.albedo_steps, as the NeRF; then always lit: a textureless picture (the light
    on white) carries nothing about the texture (texture_field.TEXTURE_SHADING)."""
    return "albedo" if step < config.albedo_steps else "lambertian"


def setup(config: GenerateConfig, out_dir: Path, fitted: SourceMesh, prior, resume: bool,
          on_event: EventCallback) -> TextureRun:
    device = resolve_device(config.device)
    checkpoint_path, state = resume_state(config, out_dir, device, resume, ("prompt", "source_mesh", "fit"))
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    config, prior, method = prior_and_method(config, device, prior, on_event)
    model = TextureModel(nerf_settings(config), MeshRaycaster(fitted.vertices, fitted.faces, device), device)
    optimizer = make_optimizer(model, config)
    run = TextureRun(config, prior, method, model, optimizer, generator, device, checkpoint_path)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        generator.set_state(state["generator"])
        run.start_step, run.elapsed_before = state["step"], state.get("elapsed_s", 0.0)
        on_event(Log("info", f"resumed from {checkpoint_path} at step {run.start_step}"))
    return run


def train_step(run: TextureRun, step: int, timer: StepTimer, guard: NaNGuard):
    """One distillation step; returns (the method's output, the score-distillation loss on the device)."""
    config, model = run.config, run.model
    marks = [timer.mark()]
    model.set_active_levels(active_levels(step, config))
    cameras = sample_cameras(config.batch_size, config.resolution, config.resolution, run.generator)
    lights = sample_light_positions(cameras, run.generator).to(run.device, non_blocking=True)
    cameras = cameras.to(run.device)
    shading = texture_shading(step, config)
    render = model.render(cameras, shading, lights)
    rgb, background = augment_background(render, config.random_background_prob, run.generator)
    x = run.prior.encode(rgb.permute(0, 3, 1, 2))
    marks.append(timer.mark())
    out = run.method.gradient(x.detach(), step, make_view(cameras, shading, lights, render.opacity, background))
    marks.append(timer.mark())
    loss = gradient_loss(x, out.grad.to(x.dtype))
    run.optimizer.found_inf = guard.check(out.grad, loss)  # a bad step changes nothing (fused Adam skips it)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    marks.append(timer.mark())
    timer.add(marks)
    return out, loss


@torch.no_grad()
def render_turntable(model: TextureModel, n: int, resolution: int, device: torch.device) -> torch.Tensor:
    """n views [n, H, W, 3] around the mesh, lit from the camera side (finish.render_views' cameras)."""
    cams = turntable_cameras(n, resolution, resolution, device=device)
    return torch.cat([model.render(cams[i:i + 1], "lambertian", cams.positions[i:i + 1] * 1.5).rgb
                      for i in range(n)])


def train_texture(config: GenerateConfig, out_dir: Path, on_event: EventCallback = ignore_event,
                  should_stop: StopCheck = never_stop, prior=None, resume: bool = False) -> TrainResult:
    """Texture config.source_mesh for config.prompt (config.source == "texture"). See the module docstring."""
    config = config.validate().resolved()
    if config.source != "texture":
        raise UserError(f"train_texture paints a given mesh but source is {config.source!r}: set source 'texture' "
                        "(or call backend.train.train for a new object)")
    tune_allocator()
    out_dir = prepare_output(out_dir)
    source = load_source_mesh(config.source_mesh)
    fitted, placement = fit(source, config.fit)
    run = setup(config, out_dir, fitted, prior, resume, on_event)
    stopped, step = loop(run, out_dir, on_event, should_stop)
    result = TrainResult(out_dir=out_dir, stopped=stopped)
    result.outputs["checkpoint.pt"] = run.checkpoint_path
    if stopped:
        on_event(Log("info", f"stopped at step {step}; resume with --resume (checkpoint {run.checkpoint_path})"))
        return result
    outputs, result.report = finish_texture(run, source, fitted, placement, out_dir, step)
    result.outputs.update(outputs)
    on_event(Finished(outputs={k: str(v) for k, v in result.outputs.items()}))
    return result


def loop(run: TextureRun, out_dir: Path, on_event: EventCallback, should_stop: StopCheck) -> tuple[bool, int]:
    """The steps from run.start_step, with train.py's events, reads and checkpoints. (stopped, steps done)."""
    config = run.config
    timer, guard = StepTimer(run.device), NaNGuard(run.device)
    loss_value, read_yet, recent = float("nan"), False, []
    run_start = time.perf_counter()
    elapsed = lambda: run.elapsed_before + time.perf_counter() - run_start  # noqa: E731
    step = run.start_step
    for step in range(run.start_step, config.steps):
        if should_stop():
            break
        wall = time.perf_counter()
        out, loss_sd = train_step(run, step, timer, guard)
        done = step + 1
        recent = (recent + [time.perf_counter() - wall])[-20:]
        previewing = bool(config.preview_every) and (done % config.preview_every == 0 or done == config.steps)
        checkpointing = bool(config.checkpoint_every) and done % config.checkpoint_every == 0
        if not read_yet or done % READ_EVERY == 0 or done == config.steps or previewing or checkpointing:
            loss_value = read_guard(guard, loss_sd, step, on_event, lambda: run.checkpoint(done, elapsed()))
            timer.collect()
            read_yet = True
        it_per_s = len(recent) / max(sum(recent), 1e-9)
        on_event(Progress(step=done, total=config.steps, t=int(out.t), loss=loss_value, it_per_s=it_per_s,
                          eta_s=(config.steps - done) / it_per_s))
        if previewing:
            image = to_uint8(render_turntable(run.model, 1, config.resolution, run.device)[0])
            save_png(image, out_dir / "previews" / f"step_{done:05d}.png")
            on_event(Preview(step=done, image=image))
        if checkpointing:
            run.checkpoint(done, elapsed())
    else:
        step = config.steps
    timer.collect()
    run.timings, run.elapsed = timer.seconds, elapsed()
    run.checkpoint(step, run.elapsed)
    return step < config.steps, step


def finish_texture(run: TextureRun, source: SourceMesh, fitted: SourceMesh, placement: Fit, out_dir: Path,
                   steps_done: int) -> tuple[dict[str, Path], dict]:
    """Turntable, bake (texture.png, mesh.glb/.obj, corner_uv.bin) and report.json."""
    run.model.eval()
    outputs: dict[str, Path] = {}
    views = render_turntable(run.model, TURNTABLE_VIEWS, turntable_size(run.config.resolution), run.device)
    outputs["turntable.png"] = save_png(grid(list(views), columns=TURNTABLE_VIEWS // 2), out_dir / "turntable.png")
    baked = bake_texture(run.model, source, fitted, out_dir, run.config.texture_size)
    outputs.update(baked.paths)
    report = build_report(run.config, _Described(run.prior), run.model, run.device, run.timings, run.elapsed, steps_done,
                          {"bake": baked.stats})
    report["texture"] = {"fit": placement.to_dict(), "faces": int(len(source.faces)), **baked.stats}
    if hasattr(run.prior, "ground_truth"):
        report["ground_truth"] = texture_ground_truth(baked, fitted, run.prior.ground_truth())
    outputs["report.json"] = write_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=str))
    return outputs, report


class _Described:
    """A prior as build_report sees it: its description only (the NeRF's ground truth needs a density)."""

    def __init__(self, prior):
        self.describe = prior.describe


def texture_ground_truth(baked, fitted: SourceMesh, objects) -> dict:
    """The baked texture against each object the prompt names (same shape and place: fit none); the best."""
    from .truth import texture_error

    scores = [texture_error(baked.texture, baked.corner_uv, fitted, obj) for obj in objects[:16]]
    return min(scores, key=lambda s: s["texture_error"])
