"""Texture mode: the distillation loop of backend/train.py with the geometry fixed to the artist's mesh.

Each step: random cameras and lights (as the NeRF's), one ray per pixel cast at the mesh, the texture
field queried at the hits and shaded, the background recomposited as in train.py, the prior and the method
give a gradient on the render, and Adam updates the texture field and the background. `TextureTrainer` is
backend.train's Trainer with the parts that differ overridden, so events, stopping, checkpoints and resume
behave as in backend.train.train; at the end the texture is baked into the mesh's UVs (bake.py) and
report.json records the run, with the texture error against the true object on the exact shapes prior
(truth.py). docs/selection.md, "Texture mode".
"""
from __future__ import annotations

from pathlib import Path

import torch

from shared.results import REPORT, TURNTABLE

from ..cameras import turntable_cameras
from ..checkpoint import nerf_settings
from ..config import GenerateConfig
from ..errors import UserError
from ..events import EventCallback, StopCheck, ignore_event, never_stop
from ..finish import TURNTABLE_VIEWS, build_report, save_turntable, turntable_size, write_report
from ..methods import gradient_loss
from ..train import Trainer, TrainResult, active_levels, run_to_end
from .bake import bake_texture
from .mesh_input import SourceMesh, fit, load_source_mesh
from .raycast import MeshRaycaster
from .texture_field import TextureModel


def texture_shading(step: int, config: GenerateConfig) -> str:
    """Albedo only for config.albedo_steps, as the NeRF; then always lit: a textureless picture (the light
    on white) carries nothing about the texture (texture_field.TEXTURE_SHADING)."""
    return "albedo" if step < config.albedo_steps else "lambertian"


class TextureTrainer(Trainer):
    """One texture run (config.source == "texture"): a TextureModel on the fitted source mesh, no
    occupancy grid, no shape guide (shape_guide.prepare has none for this source), no coarse mesh; the
    loss is the score-distillation loss alone, and the finish bakes the texture (finish_texture)."""

    SAME_RUN = ("prompt", "source_mesh", "fit")  # another mesh or placement is another run

    def __init__(self, config: GenerateConfig, out_dir: Path, on_event: EventCallback = ignore_event,
                 prior=None, resume: bool = False):
        if config.source != "texture":
            raise UserError(f"train_texture paints a given mesh but source is {config.source!r}: set source "
                            "'texture' (or call backend.train.train for a new object)")
        self.source = load_source_mesh(config.source_mesh)  # read and checked before the prior loads
        self.fitted, self.placement = fit(self.source, config.fit)
        super().__init__(config, out_dir, on_event, prior=prior, resume=resume)

    def _build_model(self) -> TextureModel:
        raycaster = MeshRaycaster(self.fitted.vertices, self.fitted.faces, self.device)
        return TextureModel(nerf_settings(self.config), raycaster, self.device)

    def _before_step(self, step: int) -> None:
        self.model.set_active_levels(active_levels(step, self.config))  # no occupancy grid: rays hit the mesh

    def _render_size(self, step: int) -> int:
        """The resolution throughout: coarse to fine sharpens a field's outline, and a given mesh has its own."""
        return self.config.resolution

    def _shading(self, step: int) -> str:
        return texture_shading(step, self.config)

    def _loss(self, x: torch.Tensor, grad: torch.Tensor, render, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss = gradient_loss(x, grad)  # the geometry is given: no orientation, sparsity or shape terms
        return loss, loss

    def _preview_image(self) -> torch.Tensor:
        return render_turntable(self.model, 1, self.config.resolution, self.device)[0]

    def coarse_mesh(self) -> None:
        """Nothing: the mesh is the artist's and does not change."""

    def _finish_outputs(self) -> tuple[dict[str, Path], dict]:
        return finish_texture(self)


@torch.no_grad()
def render_turntable(model: TextureModel, n: int, resolution: int, device: torch.device) -> torch.Tensor:
    """n views [n, H, W, 3] around the mesh, lit from the camera side (finish.render_views' cameras)."""
    cams = turntable_cameras(n, resolution, resolution, device=device)
    return torch.cat([model.render(cams[i:i + 1], "lambertian", cams.positions[i:i + 1] * 1.5).rgb
                      for i in range(n)])


def train_texture(config: GenerateConfig, out_dir: Path, on_event: EventCallback = ignore_event,
                  should_stop: StopCheck = never_stop, prior=None, resume: bool = False) -> TrainResult:
    """Texture config.source_mesh for config.prompt (config.source == "texture"). See the module docstring."""
    return run_to_end(TextureTrainer(config, out_dir, on_event, prior=prior, resume=resume), should_stop)


def finish_texture(run: TextureTrainer) -> tuple[dict[str, Path], dict]:
    """Turntable, bake (texture.png, mesh.glb/.obj, corner_uv.bin) and report.json."""
    run.model.eval()
    views = render_turntable(run.model, TURNTABLE_VIEWS, turntable_size(run.config.resolution), run.device)
    outputs: dict[str, Path] = {TURNTABLE: save_turntable(views, run.out_dir)}
    baked = bake_texture(run.model, run.source, run.fitted, run.out_dir, run.config.texture_size)
    outputs.update(baked.paths)
    report = build_report(run.config, _Described(run.prior), run.model, run.device, run.timer.seconds, run.elapsed_s,
                          run.step_index, {"bake": baked.stats})
    report["texture"] = {"fit": run.placement.to_dict(), "faces": int(len(run.source.faces)), **baked.stats}
    if hasattr(run.prior, "ground_truth"):
        report["ground_truth"] = texture_ground_truth(baked, run.fitted, run.prior.ground_truth())
    outputs[REPORT] = write_report(report, run.out_dir)
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
