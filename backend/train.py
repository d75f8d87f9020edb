"""The distillation loop: camera -> render -> method(prior) -> gradient on the render -> Adam step.

`Trainer` holds one run and steps it (step, read-back, checkpoint, preview, finish); `train` drives
a Trainer to the end (`run_to_end`, which texture mode's TextureTrainer shares) and is what the CLI, the
Python API, the server's job process and batch call. It
reports through `on_event` (backend.events), stops cleanly when `should_stop()` turns true (checkpoint
written), and writes into `out_dir`: previews/step_NNNNN.png and checkpoint.pt, then (backend.finish)
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

from shared.results import CHECKPOINT
from shared.schema import RUN_FIELDS

from .cameras import sample_cameras, sample_light_positions
from .checkpoint import load_checkpoint, nerf_settings, save_checkpoint
from .config import GenerateConfig
from .devices import resolve_device
from .errors import UserError
from .events import CoarseMesh, EventCallback, Finished, Log, Preview, Progress, StopCheck, ignore_event, never_stop
from .finish import ground_truth_metrics  # noqa: F401  (public here)
from .finish import finish as finish_run, render_views
from . import shape_guide
from .losses import total_loss
from .methods import GradientOutput, guidance_scale, make_method
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


def render_size(step: int, config: GenerateConfig) -> int:
    """The step's render height = width: half the resolution for the first coarse_fraction of the steps,
    then the resolution (coarse to fine). The prior's pictures keep its own size: a coarse render is
    resized to it like any other (docs/quality.md, "Coarse to fine, the draft since 2026-12-04")."""
    if step < round(config.coarse_fraction * config.steps):
        return max(int(RUN_FIELDS["resolution"].low), config.resolution // 2)  # never under the smallest size
    return config.resolution


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
    checkpoint_path = out_dir / CHECKPOINT
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


class Trainer:
    """One run's state, stepped from outside: the CLI, the server and batch drive it through `train`
    (below); a caller that interleaves its own work between steps drives it itself:

        trainer = Trainer(config, out_dir, on_event, prior=prior, resume=resume)
        while not trainer.done:
            trainer.step()          # one step; reads back, previews and checkpoints when their step comes
        result = trainer.finish()   # or trainer.stop(): the checkpoint only, to resume later

    Building one does everything that precedes the first step, in a fixed order, so the random
    streams (torch's global seed, the loop's generator, the method's) are those of any other run with
    the same config; resuming restores all three from the checkpoint.

    A kind of run that differs (texture mode: backend/texture/train_texture.py) subclasses it and
    overrides the hooks: SAME_RUN, _build_model, _before_step, _shading, _loss, _preview_image,
    coarse_mesh and _finish_outputs."""

    SAME_RUN = ("prompt",)  # the settings a checkpoint must share with the config to be resumed

    def __init__(self, config: GenerateConfig, out_dir: Path, on_event: EventCallback = ignore_event,
                 prior: Prior | None = None, resume: bool = False):
        config = config.resolved()  # valid already: a GenerateConfig checks itself when built
        tune_allocator()
        self.on_event, self.out_dir = on_event, prepare_output(out_dir)
        self.device = resolve_device(config.device)
        self.checkpoint_path, state = resume_state(config, self.out_dir, self.device, resume, self.SAME_RUN)
        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.config, self.prior, self.method = prior_and_method(config, self.device, prior, on_event)
        self.model = self._build_model()
        self.optimizer = make_optimizer(self.model, self.config)
        self.step_index, self.elapsed_before = self._restore(state)  # steps done so far
        self.guide = shape_guide.prepare(self.model, self.config, fresh=state is None)  # source "shape": the mesh
        self.timer, self.guard = StepTimer(self.device), NaNGuard(self.device)
        self.loss_sd = torch.full((), float("nan"), device=self.device)  # the last step's, on the device
        self.loss, self.read_yet = float("nan"), False                    # its last read-back value
        self.recent: list[float] = []  # host wall time of the last steps, for it/s
        self.elapsed_s = 0.0           # seconds trained, as of the end (stop or finish)
        self.run_start = time.perf_counter()

    @property
    def done(self) -> bool:
        """Whether every step of config.steps has run."""
        return self.step_index >= self.config.steps

    def elapsed(self) -> float:
        """Seconds trained, this run and the ones it resumed."""
        return self.elapsed_before + time.perf_counter() - self.run_start

    def step(self) -> GradientOutput:
        """One training step, then what falls due after it: the read-back (every READ_EVERY steps and at
        the first, the last, a preview or a checkpoint), the Progress event, the preview, the live coarse
        mesh and the checkpoint. Returns the method's output."""
        config, step = self.config, self.step_index
        wall = time.perf_counter()
        self._before_step(step)
        out, self.loss_sd = self._distill(step)
        self.step_index = done = step + 1
        self.recent = (self.recent + [time.perf_counter() - wall])[-20:]
        previewing = bool(config.preview_every) and (done % config.preview_every == 0 or done == config.steps)
        checkpointing = bool(config.checkpoint_every) and done % config.checkpoint_every == 0
        if not self.read_yet or done % READ_EVERY == 0 or done == config.steps or previewing or checkpointing:
            self.read_back()  # the first step is read too, so no event carries a placeholder loss
        self.on_event(self.progress(int(out.t)))
        if previewing:
            self.preview()
        if config.coarse_mesh_every and done % config.coarse_mesh_every == 0:
            self.coarse_mesh()
        if checkpointing:
            self.checkpoint()
        return out

    def read_back(self) -> float:
        """The periodic read (on a GPU, a sync): the NaN guard (a warning for skipped steps; after
        MAX_BAD_STEPS bad steps in a row, a checkpoint and RuntimeError), the step timings, and the last
        step's score-distillation loss, which it returns."""
        self.loss = read_guard(self.guard, self.loss_sd, self.step_index - 1, self.on_event, self.checkpoint)
        self.timer.collect()
        self.read_yet = True
        return self.loss

    def progress(self, t: int) -> Progress:
        """The Progress event of the step just done (t: its timestep), with the last read-back loss."""
        it_per_s = len(self.recent) / max(sum(self.recent), 1e-9)
        return Progress(step=self.step_index, total=self.config.steps, t=t, loss=self.loss, it_per_s=it_per_s,
                        eta_s=(self.config.steps - self.step_index) / it_per_s)

    def checkpoint(self, elapsed: float | None = None) -> Path:
        """Save everything a resume needs at the current step (checkpoint.pt, written atomically)."""
        save_checkpoint(self.checkpoint_path, config=self.config.to_dict(), step=self.step_index,
                        elapsed_s=self.elapsed() if elapsed is None else elapsed, model=self.model.state_dict(),
                        optimizer=self.optimizer.state_dict(), method=self.method.state_dict(),
                        generator=self.generator.get_state())
        return self.checkpoint_path

    def preview(self):
        """Render the preview view, save it as previews/step_NNNNN.png, send the Preview event; the image."""
        image = to_uint8(self._preview_image())
        save_png(image, self.out_dir / "previews" / f"step_{self.step_index:05d}.png")
        self.on_event(Preview(step=self.step_index, image=image))
        return image

    def coarse_mesh(self) -> None:
        """Send the live coarse mesh (CoarseMesh event) of the field as it is now."""
        from .export import coarse_mesh
        vertices, faces, colors = coarse_mesh(self.model, threshold=self.config.mesh_threshold)
        self.on_event(CoarseMesh(step=self.step_index, vertices=vertices, faces=faces, colors=colors))

    def stop(self) -> TrainResult:
        """End early: the checkpoint to resume from, nothing exported."""
        result = self._close(stopped=True)
        self.on_event(Log("info", f"stopped at step {self.step_index}; resume with --resume "
                                  f"(checkpoint {self.checkpoint_path})"))
        return result

    def finish(self) -> TrainResult:
        """End the run: the last checkpoint, then (backend.finish) turntable, report.json and the mesh
        files, and the Finished event."""
        result = self._close(stopped=False)
        outputs, result.report = self._finish_outputs()
        result.outputs.update(outputs)
        self.on_event(Finished(outputs={k: str(v) for k, v in result.outputs.items()}))
        return result

    def _close(self, stopped: bool) -> TrainResult:
        """The last timings and checkpoint. A run resumed with fewer steps than it had done ends at config.steps."""
        self.timer.collect()
        self.step_index = min(self.step_index, self.config.steps)
        self.elapsed_s = self.elapsed()
        self.checkpoint(self.elapsed_s)
        return TrainResult(out_dir=self.out_dir, outputs={CHECKPOINT: self.checkpoint_path}, stopped=stopped)

    def _restore(self, state: dict | None) -> tuple[int, float]:
        """Load a saved state into the run's parts; (the step to start from, the seconds already spent)."""
        if state is None:
            return 0, 0.0
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.generator.set_state(state["generator"])
        self.on_event(Log("info", f"resumed from {self.checkpoint_path} at step {state['step']}"))
        return state["step"], state.get("elapsed_s", 0.0)

    # What a kind of run overrides (see the class docstring).

    def _build_model(self) -> NeRFModel:
        """The model trained, on self.device (its config: nerf_settings)."""
        return NeRFModel(nerf_settings(self.config), device=self.device).to(self.device)

    def _before_step(self, step: int) -> None:
        """Progressive hash levels for this step; every occupancy_every steps, the occupancy grid."""
        self.model.set_active_levels(active_levels(step, self.config))
        if step % self.config.occupancy_every == 0:
            self.model.update_occupancy()

    def _distill(self, step: int) -> tuple[GradientOutput, torch.Tensor]:
        """One step: cameras -> render -> the prior's space -> the method's gradient -> Adam. Returns the
        method's output and the score-distillation loss (on the device, read later)."""
        config, generator, timer = self.config, self.generator, self.timer
        marks = [timer.mark()]
        size = self._render_size(step)
        cameras = sample_cameras(config.batch_size, size, size, generator)
        lights = sample_light_positions(cameras, generator).to(self.device, non_blocking=True)
        cameras = cameras.to(self.device)
        shading = self._shading(step)
        render = self.model.render(cameras, shading, lights)
        rgb, background = augment_background(render, config.random_background_prob, generator)
        x = self.prior.encode(rgb.permute(0, 3, 1, 2))
        marks.append(timer.mark())

        out = self.method.gradient(x.detach(), step, make_view(cameras, shading, lights, render.opacity, background))
        marks.append(timer.mark())

        loss, loss_sd = self._loss(x, out.grad.to(x.dtype), render, step)
        self.optimizer.found_inf = self.guard.check(out.grad, loss)  # a bad step changes nothing (fused Adam skips it)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        marks.append(timer.mark())
        timer.add(marks)
        return out, loss_sd

    def _render_size(self, step: int) -> int:
        """The step's render size (render_size: coarse to fine)."""
        return render_size(step, self.config)

    def _shading(self, step: int) -> str:
        """The step's shading (shading_for_step)."""
        return shading_for_step(step, self.config, self.generator)

    def _loss(self, x: torch.Tensor, grad: torch.Tensor, render, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to back-propagate, its score-distillation part): losses.total_loss, with the shape guide."""
        return total_loss(x, grad, render, step, self.config, guide=self.guide, generator=self.generator)

    def _preview_image(self) -> torch.Tensor:
        """The preview view [H, W, 3]."""
        return render_views(self.model, 1, self.config.resolution, self.device)[0]

    def _finish_outputs(self) -> tuple[dict[str, Path], dict]:
        """The finished run's files by name and its report (backend.finish: turntable, mesh, report.json)."""
        return finish_run(self.config, self.model, self.prior, self.out_dir, self.device, self.timer.seconds,
                          self.elapsed_s, self.step_index, self.on_event)


def train(config: GenerateConfig, out_dir: Path, on_event: EventCallback = ignore_event,
          should_stop: StopCheck = never_stop, prior: Prior | None = None, resume: bool = False) -> TrainResult:
    """Run (or resume) one text-to-3D distillation to its end, or until `should_stop()` turns true
    (checked before each step): a Trainer driven step by step. See the module docstring."""
    return run_to_end(Trainer(config, out_dir, on_event, prior=prior, resume=resume), should_stop)


def run_to_end(trainer: Trainer, should_stop: StopCheck = never_stop) -> TrainResult:
    """Step `trainer` until it is done (then finish it) or `should_stop()` turns true before a step (then
    stop it, checkpoint kept)."""
    while not trainer.done:
        if should_stop():
            return trainer.stop()
        trainer.step()
    return trainer.finish()


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
