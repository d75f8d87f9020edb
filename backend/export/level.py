"""The density level of the exported surface, chosen from the field's own renders (docs/export.md,
"The surface level").

A trained field has no hard surface: its density rises over a few grid cells, and how steeply
depends on the steps, the method and the prior. A fixed level therefore puts the mesh outside the
true surface on one run and inside it on another. What score distillation does pin down is the
silhouette: every step compares a render, object over background, with what the prior expects.
A pixel is inside the rendered silhouette when its ray's opacity 1 - T reaches 0.5 (T the
transmittance, NeRF eq. 3); it is inside the silhouette of the level-L mesh when the ray meets
density L somewhere. So: cast rays from cameras around the object and take the level whose
silhouettes disagree with the rendered ones on the fewest rays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..cameras import orbit_cameras
from ..errors import UserError
from ..nerf.sampler import intersect_box
from .extract import DEFAULT_CHUNK, field_device

# The views: 8 azimuths (between the catalogue's axes, so no ray runs along a cube face) at two
# elevations inside the training range (backend/cameras.py), the turntable's distance and field of view.
LEVEL_AZIMUTHS = 8
LEVEL_ELEVATIONS_DEG = (0.0, 30.0)
LEVEL_RAYS = 24                 # per view side
COARSE_STEPS = 64               # midpoint samples along a ray through the box
HALF_LIGHT = math.log(2.0)      # optical depth at which T = 0.5: the rendered silhouette's edge


@dataclass
class Level:
    level: float     # the density marching cubes uses
    rule: str        # how it was chosen, for report.json
    rays: int = 0    # rays it was chosen from

    def as_dict(self) -> dict:
        return {"level": round(self.level, 4), "rule": self.rule, "rays": self.rays}


def fixed_level(value: float) -> Level:
    return Level(float(value), "given")


@torch.no_grad()
def surface_level(field, bound: float = 1.0, chunk: int = DEFAULT_CHUNK, rays: int = LEVEL_RAYS) -> Level:
    """The level whose silhouettes agree best with the field's rendered ones, over LEVEL_AZIMUTHS x
    LEVEL_ELEVATIONS_DEG views of rays x rays pixels (the live coarse mesh uses fewer). A ray's pixel
    is inside the rendered silhouette when its opacity 1 - T reaches 0.5; inside the level-L
    silhouette when the ray meets density L somewhere. The level is the middle of the range of L that
    misclassifies the fewest rays. Raises UserError when no ray is stopped (an empty or transparent
    field)."""
    device = field_device(field)
    origins, dirs, near, far = level_rays(rays, bound)
    step = (far - near) / COARSE_STEPS
    t = near[:, None] + (torch.arange(COARSE_STEPS) + 0.5) * step[:, None]
    sigma = _density(field, origins[:, None] + t[..., None] * dirs[:, None], device, chunk)
    rendered = (sigma * step[:, None]).sum(dim=1) >= HALF_LIGHT       # opacity >= 0.5
    if not bool(rendered.any()):
        raise UserError("no view of the field is opaque anywhere, so there is no surface to export; "
                        "train longer, or give the level with --threshold")
    peak, order = torch.sort(sigma.amax(dim=1))
    inside = rendered[order].int()
    # a level just above peak[i] leaves rays 0..i outside: wrong are the rendered ones among them
    # plus the unrendered ones above
    wrong = torch.cumsum(inside, 0) + ((1 - inside).sum() - torch.cumsum(1 - inside, 0))
    best = torch.nonzero(wrong == wrong.min()).squeeze(1)
    i = int(best[len(best) // 2])
    level = 0.5 * (float(peak[i]) + float(peak[min(i + 1, len(peak) - 1)]))
    views = len(LEVEL_ELEVATIONS_DEG) * LEVEL_AZIMUTHS
    return Level(level, f"silhouettes of {views} views ({rays}x{rays} rays) agree best with the rendered "
                        f"ones (opacity 0.5): {int(wrong.min())} of {len(peak)} rays differ", int(len(peak)))


def level_rays(rays: int, bound: float = 1.0) -> tuple[torch.Tensor, ...]:
    """Origins, directions, entry and exit distances of the rays of the level's views that cross the box."""
    elevation = torch.tensor(LEVEL_ELEVATIONS_DEG).repeat_interleave(LEVEL_AZIMUTHS)
    azimuth = (torch.arange(LEVEL_AZIMUTHS, dtype=torch.float32).repeat(len(LEVEL_ELEVATIONS_DEG)) + 0.5) * (
        360.0 / LEVEL_AZIMUTHS)
    full = lambda v: torch.full((len(elevation),), float(v))  # noqa: E731
    cameras = orbit_cameras(elevation, azimuth, full(1.8), full(55.0), rays, rays)
    origins, dirs = (t.reshape(-1, 3) for t in cameras.rays())
    near, far = intersect_box(origins, dirs, -bound, bound)
    hit = far > near
    return origins[hit], dirs[hit], near[hit], far[hit]


def _density(field, points: torch.Tensor, device: torch.device, chunk: int) -> torch.Tensor:
    """field.density over points [..., 3] (CPU), chunk by chunk; non-negative, on the CPU."""
    flat = points.reshape(-1, 3)
    out = torch.cat([field.density(flat[i:i + chunk].to(device)).float().cpu() for i in range(0, len(flat), chunk)])
    return out.clamp(min=0.0).reshape(points.shape[:-1])
