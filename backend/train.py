"""The distillation loop: camera -> render -> method(prior) -> gradient on the render -> Adam step.

One function, `train`, used by the CLI, the Python API and the server. It reports through
`on_event` (backend.events), stops cleanly when `should_stop()` turns true (checkpoint written), and
writes into `out_dir`: previews/step_NNNNN.png and checkpoint.pt, then (backend.finish)
turntable.png, report.json and the exported mesh files.

A step never waits for the device: the NaN guard and the loss live on the device and are read every
READ_EVERY steps (and at the first step, previews, checkpoints and the end), timings use CUDA events on a GPU. The
only host syncs left in a step are the sample counts of the packed ray marcher (nerf/sampler.py,
`known_sync`) and whatever the prior and method need.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .cameras import sample_cameras, sample_light_positions
from .checkpoint import load_checkpoint, nerf_settings, save_checkpoint
from .config import GenerateConfig
from .devices import resolve_device
from .errors import UserError
from .events import CoarseMesh, EventCallback, Finished, Log, Preview, Progress, StopCheck, ignore_event, never_stop
from .finish import finish, ground_truth_metrics, render_views  # noqa: F401  (ground_truth_metrics: public here)
from . import shape_guide
from .losses import total_loss
from .methods import guidance_scale, make_method
from .nan_guard import MAX_BAD_STEPS, NaNGuard
from .nerf import NeRFModel
from .pictures import save_png, to_uint8
from .priors import Prior, View, load_prior
from .runtime import tune_allocator
from .step_timer import StepTimer

READ_EVERY = 10  # steps between reads of the loss and the NaN guard (on a GPU each read is a sync)


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


def augment_background(render, probability: float, generator: torch.Generator):
    """(rgb, background), both [B, H, W, 3]: the render as is, or, with `probability`, recomposited
    over a random solid colour (threestudio's random_aug), so the learned background cannot take
    on the object's colour and hide its silhouette from the prior (docs/quality.md)."""
    if torch.rand((), generator=generator).item() >= probability:
        return render.rgb, render.background
    background = torch.rand(3, generator=generator).to(render.rgb, non_blocking=True).expand_as(render.background)
    return render.rgb + (1.0 - render.opacity) * (background - render.background), background


def make_view(cameras, shading: str, lights: torch.Tensor, opacity: torch.Tensor, background: torch.Tensor) -> View:
    return View(cameras=cameras, shading=shading, light_positions=lights,
                background=background.permute(0, 3, 1, 2).detach(), opacity=opacity.permute(0, 3, 1, 2).detach())


def resume_state(config: GenerateConfig, out_dir: Path, device: torch.device, resume: bool,
                 same: tuple[str, ...]) -> tuple[Path, dict | None]:
    """(the run's checkpoint path, its saved state when resuming, else None). A checkpoint whose
    settings named in `same` differ from config's is refused: it belongs to another run."""
    checkpoint_path = out_dir / "checkpoint.pt"
    state = load_checkpoint(checkpoint_path, map_location=device) if resume else None
    for key in same if state is not None else ():
        if state["config"].get(key) != getattr(config, key):
            raise UserError(f"the checkpoint in {out_dir} is for the {key} {state['config'].get(key)!r}: resume "
                            f"with the same {key}, or use another --out")
    return checkpoint_path, state


def prior_and_method(config: GenerateConfig, device: torch.device, prior: Prior | None,
                     on_event: EventCallback) -> tuple[GenerateConfig, Prior, object]:
    """The prior (loaded unless given) with the prompts set and the method set up on it, and the config
    with the guidance scale used (the report and checkpoint record it)."""
    if prior is None:
        on_event(Log("info", f"loading prior {config.prior!r}"))
        prior = load_prior(config.prior, device, resolution=config.resolution, offline=config.offline,
                           options=config.prior_options)
    method = make_method(config.method, cfg=guidance_scale(config.cfg, config.method_options, prior),
                         options=config.method_options, max_steps=config.steps, seed=config.seed)
    config = replace(config, cfg=method.cfg)
    negative = config.negative if config.negative is not None else getattr(method, "default_negative", None)
    prior.set_prompts(config.prompt, negative, config.view_dependent)
    method.setup(prior)
    return config, prior, method


def make_optimizer(model, config: GenerateConfig) -> torch.optim.Adam:
    """Adam over the field (lr) and the background (background_lr), threestudio's betas and eps."""
    return torch.optim.Adam([
        {"params": list(model.field_parameters()), "lr": config.lr},
        {"params": list(model.background_parameters()), "lr": config.background_lr},
    ], betas=(0.9, 0.99), eps=1e-15, fused=True)  # fused: one pass per tensor, and found_inf (NaNGuard)


def train(config: GenerateConfig, out_dir: Path, on_event: EventCallback = ignore_event,
          should_stop: StopCheck = never_stop, prior: Prior | None = None, resume: bool = False) -> TrainResult:
    """Run (or resume) one text-to-3D distillation. See the module docstring."""
    config = config.validate().resolved()
    tune_allocator()
    out_dir = prepare_output(out_dir)
    device = resolve_device(config.device)
    checkpoint_path, state = resume_state(config, out_dir, device, resume, ("prompt",))
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    config, prior, method = prior_and_method(config, device, prior, on_event)
    model = NeRFModel(nerf_settings(config), device=device).to(device)
    optimizer = make_optimizer(model, config)
    start_step, elapsed_before = restore(state, model, optimizer, method, generator, on_event, checkpoint_path)
    guide = shape_guide.prepare(model, config, fresh=state is None)  # source "shape": start from the mesh

    def checkpoint(step: int, elapsed: float) -> None:
        save_checkpoint(checkpoint_path, config=config.to_dict(), step=step, elapsed_s=elapsed,
                        model=model.state_dict(), optimizer=optimizer.state_dict(),
                        method=method.state_dict(), generator=generator.get_state())

    timer, guard = StepTimer(device), NaNGuard(device)
    loss_sd = torch.full((), float("nan"), device=device)
    loss_value, stopped, read_yet = float("nan"), False, False
    run_start = time.perf_counter()
    recent: list[float] = []  # host wall time of the last steps, for it/s
    step = start_step
    for step in range(start_step, config.steps):
        if should_stop():
            stopped = True
            break
        wall = time.perf_counter()
        model.set_active_levels(active_levels(step, config))
        if step % config.occupancy_every == 0:
            model.update_occupancy()
        out, loss_sd = distill_step(model, prior, method, optimizer, step, config, generator, timer, guard, guide)

        done = step + 1
        recent = (recent + [time.perf_counter() - wall])[-20:]
        previewing = bool(config.preview_every) and (done % config.preview_every == 0 or done == config.steps)
        checkpointing = bool(config.checkpoint_every) and done % config.checkpoint_every == 0
        if not read_yet or done % READ_EVERY == 0 or done == config.steps or previewing or checkpointing:
            loss_value = read_guard(guard, loss_sd, step, on_event,
                                    lambda: checkpoint(done, elapsed_before + time.perf_counter() - run_start))
            timer.collect()
            read_yet = True  # the first step is read too, so no event carries a placeholder loss
        it_per_s = len(recent) / max(sum(recent), 1e-9)
        on_event(Progress(step=done, total=config.steps, t=int(out.t), loss=loss_value, it_per_s=it_per_s,
                          eta_s=(config.steps - done) / it_per_s))
        live_outputs(model, config, done, previewing, out_dir, on_event)
        if checkpointing:
            checkpoint(done, elapsed_before + time.perf_counter() - run_start)
    else:
        step = config.steps

    timer.collect()
    elapsed = elapsed_before + time.perf_counter() - run_start
    checkpoint(step, elapsed)
    result = TrainResult(out_dir=out_dir, stopped=stopped)
    result.outputs["checkpoint.pt"] = checkpoint_path
    if stopped:
        on_event(Log("info", f"stopped at step {step}; resume with --resume (checkpoint {checkpoint_path})"))
        return result

    outputs, result.report = finish(config, model, prior, out_dir, device, timer.seconds, elapsed, step, on_event)
    result.outputs.update(outputs)
    on_event(Finished(outputs={k: str(v) for k, v in result.outputs.items()}))
    return result


def restore(state: dict | None, model, optimizer, method, generator: torch.Generator, on_event: EventCallback,
            checkpoint_path: Path) -> tuple[int, float]:
    """Load a saved state into the run's parts; (the step to start from, the seconds already spent)."""
    if state is None:
        return 0, 0.0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    method.load_state_dict(state["method"])
    generator.set_state(state["generator"])
    on_event(Log("info", f"resumed from {checkpoint_path} at step {state['step']}"))
    return state["step"], state.get("elapsed_s", 0.0)


def distill_step(model: NeRFModel, prior: Prior, method, optimizer, step: int, config: GenerateConfig,
                 generator: torch.Generator, timer: StepTimer, guard: NaNGuard, guide):
    """One step: cameras -> render -> the prior's space -> the method's gradient -> Adam. Returns the
    method's output and the score-distillation loss (on the device, read later)."""
    device = next(model.parameters()).device
    marks = [timer.mark()]
    cameras = sample_cameras(config.batch_size, config.resolution, config.resolution, generator)
    lights = sample_light_positions(cameras, generator).to(device, non_blocking=True)
    cameras = cameras.to(device)
    shading = shading_for_step(step, config, generator)
    render = model.render(cameras, shading, lights)
    rgb, background = augment_background(render, config.random_background_prob, generator)
    x = prior.encode(rgb.permute(0, 3, 1, 2))
    marks.append(timer.mark())

    out = method.gradient(x.detach(), step, make_view(cameras, shading, lights, render.opacity, background))
    marks.append(timer.mark())

    loss, loss_sd = total_loss(x, out.grad.to(x.dtype), render, step, config, guide=guide, generator=generator)
    optimizer.found_inf = guard.check(out.grad, loss)  # a bad step changes nothing (fused Adam skips it)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    marks.append(timer.mark())
    timer.add(marks)
    return out, loss_sd


def live_outputs(model: NeRFModel, config: GenerateConfig, done: int, previewing: bool, out_dir: Path,
                 on_event: EventCallback) -> None:
    """The preview picture and the live coarse mesh, when their step has come."""
    if previewing:
        device = next(model.parameters()).device
        image = to_uint8(render_views(model, 1, config.resolution, device)[0])
        save_png(image, out_dir / "previews" / f"step_{done:05d}.png")
        on_event(Preview(step=done, image=image))
    if config.coarse_mesh_every and done % config.coarse_mesh_every == 0:
        from .export import coarse_mesh
        vertices, faces, colors = coarse_mesh(model, threshold=config.mesh_threshold)
        on_event(CoarseMesh(step=done, vertices=vertices, faces=faces, colors=colors))


def read_guard(guard: NaNGuard, loss_sd: torch.Tensor, step: int, on_event: EventCallback, save) -> float:
    """The periodic read: warn about skipped steps, abandon the run (after `save`) when MAX_BAD_STEPS
    in a row were bad, and return the last step's score-distillation loss."""
    worst, skipped = guard.read()
    if skipped:
        on_event(Log("warning", f"step {step + 1}: {skipped} step(s) with a non-finite gradient skipped since the "
                                f"last report (at most {worst} in a row)"))
    if worst >= MAX_BAD_STEPS:
        save()
        raise RuntimeError(f"training diverged: {worst} steps in a row gave NaN/inf gradients. "
                           "Lower --cfg or the learning rate, or change --seed, and start again")
    return float(loss_sd.detach())
