"""The field's shape start (source "shape", backend/shape_guide.py): the density bias that replaces the
starting blob, read from a signed-distance grid of the artist's mesh. It lives in nerf/ because the
field evaluates it in every forward pass; shape_guide.py builds the grid and its settings.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_grid(grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples [N, C] of a grid [C, R, R, R] (x-major) at points [N, 3] in [-1, 1]^3; points
    outside take the border value."""
    # grid_sample reads its coordinates as (W, H, D) = (last, middle, first) axis: hence the flip.
    coords = points.to(grid.dtype).flip(-1).view(1, -1, 1, 1, 3)
    samples = F.grid_sample(grid[None], coords, mode="bilinear", padding_mode="border", align_corners=True)
    return samples.view(grid.shape[0], -1).t()


def shape_bias(grid: torch.Tensor, settings: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bias [N], d bias / d point [N, 3]) of the field's shape start at points [N, 3]: the blob's
    replacement (backend/shape_guide.py bias_settings)."""
    sampled = sample_grid(grid, points.detach()).to(points.dtype)
    level_raw, slope, floor, ceiling = settings[:4].to(points.dtype).unbind()
    raw = level_raw - slope * sampled[:, 0]
    free = ((raw > floor) & (raw < ceiling)).to(points.dtype)
    return raw.clamp(floor, ceiling), -slope * free[:, None] * sampled[:, 1:]
