"""The density level of the exported surface, chosen from the field's own renders (docs/export.md,
"The surface level").

A trained field has no hard surface: its density rises over a few grid cells, and how steeply
depends on the steps, the method and the prior. A fixed level therefore puts the mesh outside the
true surface on one run and inside it on another. What score distillation does pin down is the
silhouette: every step compares a render, object over background, with what the prior expects.
A pixel is inside the rendered silhouette when its ray's opacity 1 - T reaches 0.5 (T the
transmittance, NeRF eq. 3); it is inside the silhouette of the level-L mesh when the ray meets
density L somewhere. So: cast rays from cameras around the object and take the peak density of a
ray whose opacity is exactly 0.5, fitted over the rays on the rendered outlines.
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
# elevations inside the training range (backend/cameras.py), the turntable's field of view.
LEVEL_AZIMUTHS = 8
LEVEL_ELEVATIONS_DEG = (0.0, 30.0)
LEVEL_DISTANCE = (1.6, 2.0)     # camera distances, spread over the views (level_rays)
LEVEL_RAYS = 32                 # per view side: a few hundred rays on the outlines for the fit
COARSE_STEPS = 64               # midpoint samples along a ray through the box
PEAK_WINDOW = 2                 # coarse steps each side of a ray's coarse peak, sampled finely
FINE_PER_STEP = 8               # fine samples per coarse step there
HALF_LIGHT = math.log(2.0)      # optical depth at which T = 0.5: the rendered silhouette's edge
FIT_OPACITY = (0.2, 0.8)        # the rays on the outline the fit uses
FINE_OPACITY = (0.001, 0.9999)  # coarse opacities read finely: the fit's band with a wide margin (docs/export.md)
FIT_MIN_RAYS = 20               # fewer (a hard surface, or few rays): the agreement count instead
FIT_MIN_SPREAD = 0.1            # nor when their log depths or log peaks hardly differ (a step): no line


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
    """The density the field has at the edge of its rendered silhouettes, over LEVEL_AZIMUTHS x
    LEVEL_ELEVATIONS_DEG views of rays x rays pixels (the live coarse mesh uses fewer). A ray's pixel
    is inside the rendered silhouette when its opacity 1 - T reaches 0.5; inside the level-L
    silhouette when the ray's peak density reaches L. Over the rays on the outline, log peak is
    fitted as a line in log optical depth and read at ln 2 (docs/export.md, "The surface level");
    with too few such rays, the level is the middle of the range that misclassifies the fewest rays.
    Raises UserError when no ray is stopped (an empty or transparent field)."""
    device = field_device(field)
    origins, dirs, near, far = level_rays(rays, bound)
    step = (far - near) / COARSE_STEPS
    t = near[:, None] + (torch.arange(COARSE_STEPS) + 0.5) * step[:, None]
    sigma = _density(field, origins[:, None] + t[..., None] * dirs[:, None], device, chunk)
    depth, peak = _depth_and_peak(field, origins, dirs, t, step, sigma, device, chunk)
    if not bool((depth >= HALF_LIGHT).any()):
        raise UserError("no view of the field is opaque anywhere, so there is no surface to export; "
                        "train longer, or give the level with --threshold")
    views = f"{len(LEVEL_ELEVATIONS_DEG) * LEVEL_AZIMUTHS} views ({rays}x{rays} rays)"
    opacity = 1.0 - torch.exp(-depth)
    outline = (opacity > FIT_OPACITY[0]) & (opacity < FIT_OPACITY[1]) & (peak > 0)
    if int(outline.sum()) >= FIT_MIN_RAYS and min(float(torch.log(depth[outline]).std()),
                                                   float(torch.log(peak[outline]).std())) >= FIT_MIN_SPREAD:
        level = _fitted_peak(depth[outline], peak[outline])
        return Level(level, f"density at the rendered silhouettes' edge (opacity 0.5) of {views}, fitted "
                            f"through the {int(outline.sum())} rays of opacity {FIT_OPACITY[0]}-{FIT_OPACITY[1]}",
                     int(len(peak)))
    level, wrong = _agreement_level(peak, depth >= HALF_LIGHT)
    return Level(level, f"silhouettes of {views} agree best with the rendered ones (opacity 0.5): "
                        f"{wrong} of {len(peak)} rays differ", int(len(peak)))


def _depth_and_peak(field, origins, dirs, t, step, sigma, device, chunk) -> tuple[torch.Tensor, torch.Tensor]:
    """Each ray's optical depth (NeRF eq. 3, midpoint rule) and peak density. A ray grazing the
    outline crosses the dense shell in a chord only a few coarse steps long, so both are read
    finely over PEAK_WINDOW steps each side of the coarse peak: read coarsely, the peak comes out
    low (the level too, and the mesh too big) and the depth of such short chords is off by tens of
    percent (docs/export.md, "The surface level"). Only the rays whose coarse opacity lies in
    FINE_OPACITY are read finely: far from the outline the coarse reading nearly always decides the
    same (docs/export.md gives where it did not)."""
    depth, peak = sigma.sum(dim=1) * step, sigma.amax(dim=1)
    coarse_opacity = 1.0 - torch.exp(-depth)
    near = torch.nonzero((coarse_opacity > FINE_OPACITY[0]) & (coarse_opacity < FINE_OPACITY[1])).squeeze(1)
    if len(near) == 0:
        return depth, peak
    sigma, t, step = sigma[near], t[near], step[near]
    steps = sigma.shape[1]
    at = sigma.argmax(dim=1).clamp(PEAK_WINDOW, steps - PEAK_WINDOW - 1)
    window = (torch.arange(steps)[None] - at[:, None]).abs() <= PEAK_WINDOW        # coarse samples replaced
    fine_count = (2 * PEAK_WINDOW + 1) * FINE_PER_STEP
    offsets = (torch.arange(fine_count) + 0.5) / FINE_PER_STEP - (PEAK_WINDOW + 0.5)
    t_fine = t.gather(1, at[:, None]) + offsets * step[:, None]
    fine = _density(field, origins[near, None] + t_fine[..., None] * dirs[near, None], device, chunk)
    depth[near] = (sigma * ~window).sum(dim=1) * step + fine.sum(dim=1) * step / FINE_PER_STEP
    peak[near] = torch.maximum((sigma * ~window).amax(dim=1), fine.amax(dim=1))
    return depth, peak


def _fitted_peak(depth: torch.Tensor, peak: torch.Tensor) -> float:
    """log peak = a log depth + b by least squares over the outline's rays, read at depth ln 2. On a
    density rising as a power of the depth below a smooth surface, a ray passing delta inside the
    rim meets a peak and an optical depth that are both powers of delta, so the line is exact there;
    averaging over hundreds of rays, it moves less between ray counts than the agreement count."""
    x, y = torch.log(depth.double()), torch.log(peak.double())
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    slope, intercept = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    return float(torch.exp(slope * math.log(HALF_LIGHT) + intercept))


def _agreement_level(peak: torch.Tensor, rendered: torch.Tensor) -> tuple[float, int]:
    """The middle of the range of levels whose silhouettes misclassify the fewest rays, and that count."""
    peak, order = torch.sort(peak)
    inside = rendered[order].int()
    # a level just above peak[i] leaves rays 0..i outside: wrong are the rendered ones among them
    # plus the unrendered ones above
    wrong = torch.cumsum(inside, 0) + ((1 - inside).sum() - torch.cumsum(1 - inside, 0))
    best = torch.nonzero(wrong == wrong.min()).squeeze(1)
    i = int(best[len(best) // 2])
    return 0.5 * (float(peak[i]) + float(peak[min(i + 1, len(peak) - 1)])), int(wrong.min())


def level_rays(rays: int, bound: float = 1.0) -> tuple[torch.Tensor, ...]:
    """Origins, directions, entry and exit distances of the rays of the level's views that cross the box."""
    elevation = torch.tensor(LEVEL_ELEVATIONS_DEG).repeat_interleave(LEVEL_AZIMUTHS)
    azimuth = (torch.arange(LEVEL_AZIMUTHS, dtype=torch.float32).repeat(len(LEVEL_ELEVATIONS_DEG)) + 0.5) * (
        360.0 / LEVEL_AZIMUTHS)
    # Each view a little nearer or farther, so the pixel grid meets the outline at a different
    # sub-pixel phase: on a body of revolution every view is the same picture otherwise, and the
    # outline's rays would all pass at the same few distances from it.
    views = len(elevation)
    distance = LEVEL_DISTANCE[0] + (LEVEL_DISTANCE[1] - LEVEL_DISTANCE[0]) * (
        (torch.arange(views) * 5 % views).float() + 0.5) / views
    cameras = orbit_cameras(elevation, azimuth, distance, torch.full((views,), 55.0), rays, rays)
    origins, dirs = (t.reshape(-1, 3) for t in cameras.rays())
    near, far = intersect_box(origins, dirs, -bound, bound)
    hit = far > near
    return origins[hit], dirs[hit], near[hit], far[hit]


def _density(field, points: torch.Tensor, device: torch.device, chunk: int) -> torch.Tensor:
    """field.density over points [..., 3] (CPU), chunk by chunk; non-negative, on the CPU."""
    flat = points.reshape(-1, 3)
    out = torch.cat([field.density(flat[i:i + chunk].to(device)).float().cpu() for i in range(0, len(flat), chunk)])
    return out.clamp(min=0.0).reshape(points.shape[:-1])
