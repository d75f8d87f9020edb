"""NeRFModel: field + occupancy grid + sampler + volume renderer + shading + background.

Rendering follows nerfacc's two-pass trick, in PyTorch: march through occupied cells, evaluate the
density without gradients to find where each ray's transmittance falls below 1e-4 (only on rays
that can get there), then evaluate, with gradients, only the samples before that point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from shared.schema import RUN_FIELDS

from ..cameras import Cameras
from ..errors import UserError
from ..shading import SHADING_MODES, shade
from .background import Background
from .field import RadianceField
from .occupancy import OccupancyGrid
from .renderer import accumulate, transmittance, weights
from .sampler import RaySamples, known_sync, march


RAY_CHUNK = 1 << 14  # rays per block when rendering without gradients (a 128 x 128 view)


def _run_default(name: str):
    """A setting that is also a run setting takes its default from shared/schema.py RUN_FIELDS."""
    return RUN_FIELDS[name].default


@dataclass
class NeRFSettings:
    """The field's architecture and marching. Defaults are threestudio's DreamFusion-SD (docs/methods.md,
    "The NeRF side"); the ones a run can set come from shared/schema.py RUN_FIELDS."""

    hash_levels: int = _run_default("hash_levels")
    features_per_level: int = 2
    log2_table: int = _run_default("hash_log2_table")
    base_resolution: int = 16
    per_level_scale: float = 1.447
    levels_start: int = _run_default("hash_levels_start")  # active hash levels at the start (progressive levels)
    hidden: int = 64                 # width of the density and albedo MLPs
    blob_density: float = 10.0       # density bias blob_density * (1 - |p| / blob_radius)
    blob_radius: float = 0.5
    background_hidden: int = 16
    occupancy_resolution: int = _run_default("occupancy_resolution")
    # Samples along the cube's diagonal: sets the marching step 2 sqrt(3) / max_samples_per_ray.
    max_samples_per_ray: int = _run_default("max_samples_per_ray")
    occupancy_skipping: bool = True  # skip samples in empty occupancy cells
    early_stop: float = 1e-4         # drop samples once transmittance is below this (0: keep all)


@dataclass
class RenderOutput:
    rgb: torch.Tensor         # [B, H, W, 3] shaded, composited over the background
    opacity: torch.Tensor     # [B, H, W, 1] sum of weights
    depth: torch.Tensor       # [B, H, W, 1] sum_i w_i t_i: distance along the ray (0 where empty)
    albedo: torch.Tensor      # [B, H, W, 3] unshaded colour over the background (previews)
    normal: torch.Tensor      # [B, H, W, 3] sum_i w_i n_i, world space (not renormalised; 0 where empty)
    background: torch.Tensor  # [B, H, W, 3]
    weights: torch.Tensor     # [S] per-sample w_i = T_i alpha_i (the samples evaluated with gradients)
    normals: torch.Tensor     # [S, 3] per-sample unit normals
    view_dirs: torch.Tensor   # [S, 3] the direction of each sample's ray

    @property
    def num_samples(self) -> int:
        return self.weights.shape[0]


class NeRFModel(nn.Module):
    def __init__(self, settings: NeRFSettings | None = None, device: torch.device | str | None = None):
        """device decides the hash encoding (tiny-cuda-nn on CUDA when installed); .to() still moves
        the model as usual."""
        super().__init__()
        self.settings = settings or NeRFSettings()
        self.field = RadianceField(self.settings, device)
        self.background = Background(self.settings.background_hidden).to(device or "cpu")
        self.occupancy = OccupancyGrid(self.settings.occupancy_resolution).to(device or "cpu")
        self.occupancy.initialize(self.field.density)

    @property
    def step_size(self) -> float:
        """Marching step: max_samples_per_ray steps span the cube's diagonal 2 sqrt(3)."""
        return 2.0 * math.sqrt(3.0) / self.settings.max_samples_per_ray

    def field_parameters(self):
        return self.field.parameters()

    def background_parameters(self):
        return self.background.parameters()

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.field.density(points)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return self.field.albedo(points)

    def set_active_levels(self, n: int) -> None:
        self.field.set_active_levels(n)

    def update_occupancy(self) -> None:
        self.occupancy.update(self.field.density)

    @torch.no_grad()
    def _drop_occluded(self, samples: RaySamples, n_rays: int) -> RaySamples:
        """Pass 1: drop the samples behind the point where a ray's transmittance falls below
        early_stop. Only rays that may get there are evaluated: the occupancy grid keeps (decaying)
        maxima of the density, so a ray whose transmittance through the grid's densities stays above
        early_stop has nothing to drop (a wrong guess only costs time, never changes the image)."""
        eps, step = self.settings.early_stop, self.step_size
        bound = self.occupancy.lookup(self.occupancy.density, samples.points)
        stops = (transmittance(bound * step, samples.ray, n_rays) < eps).to(bound.dtype)
        may_stop = torch.zeros(n_rays, device=bound.device).index_add_(0, samples.ray, stops) > 0
        with known_sync():  # the samples to evaluate: how many is data
            check = may_stop[samples.ray].nonzero().squeeze(1)
        light_left = transmittance(self.field.density(samples.points[check]) * step, samples.ray[check], n_rays)
        keep = torch.ones(len(samples), dtype=torch.bool, device=bound.device).index_put_((check,), light_left > eps)
        return samples.select(keep)

    def render(self, cameras: Cameras, shading: str, light_positions: torch.Tensor) -> RenderOutput:
        if shading not in SHADING_MODES:
            raise UserError(f"unknown shading mode {shading!r}: use one of {', '.join(SHADING_MODES)}")
        batch, height, width = len(cameras), cameras.height, cameras.width
        if tuple(light_positions.shape) != (batch, 3):
            raise UserError(f"light_positions has shape {tuple(light_positions.shape)}: pass one light "
                            f"position per camera, shape ({batch}, 3)")
        origins, dirs = cameras.rays()
        origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        lights = light_positions.to(origins).repeat_interleave(height * width, dim=0)      # [R, 3], per ray
        if torch.is_grad_enabled() or origins.shape[0] <= RAY_CHUNK:
            per_ray, w, normals, view_dirs = self._render_rays(origins, dirs, lights, shading)
        else:  # pictures: blocks of rays bound the memory of large renders
            parts = [self._render_rays(*chunk, shading)
                     for chunk in zip(*(t.split(RAY_CHUNK) for t in (origins, dirs, lights)))]
            per_ray, w, normals, view_dirs = (torch.cat(part) for part in zip(*parts))
        opacity, depth, albedo, normal, rgb = per_ray.split([1, 1, 3, 3, 3], dim=1)
        background = self.background(dirs)
        image = lambda x: x.reshape(batch, height, width, -1)  # noqa: E731
        return RenderOutput(
            rgb=image(rgb + (1.0 - opacity) * background), opacity=image(opacity), depth=image(depth),
            albedo=image(albedo + (1.0 - opacity) * background), normal=image(normal),
            background=image(background), weights=w, normals=normals, view_dirs=view_dirs)

    def _render_rays(self, origins: torch.Tensor, dirs: torch.Tensor, lights: torch.Tensor, shading: str):
        """Rays [R, 3] (and each ray's light position) -> per-ray [R, 9] (opacity, depth, albedo, normal,
        colour, each sum_i w_i value_i) and the per-sample weights, normals and ray directions."""
        n_rays, step = origins.shape[0], self.step_size
        occupied = self.occupancy.occupied(step) if self.settings.occupancy_skipping else None
        samples = march(origins, dirs, step, self.settings.max_samples_per_ray, self.occupancy, occupied,
                        jitter=self.training)
        if self.settings.early_stop > 0:
            samples = self._drop_occluded(samples, n_rays)

        field = self.field(samples.points)       # pass 2, with gradients
        w = weights(field.density, step, samples.ray, n_rays)
        color = shade(field.albedo, field.normal, samples.points, lights[samples.ray], shading)
        per_ray = accumulate(w[:, None] * torch.cat(
            [torch.ones_like(w)[:, None], samples.t[:, None], field.albedo, field.normal, color], dim=1),
            samples.ray, n_rays)
        return per_ray, w, field.normal, dirs[samples.ray]
