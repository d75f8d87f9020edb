"""Occupancy grid over [-1, 1]^3 that lets the sampler skip empty space (instant-ngp §4, as in nerfacc).

Each cell keeps a decaying maximum of the density seen in it; a cell is occupied when its opacity
over one marching step exceeds min(mean, 0.01) (nerfacc's OccGridEstimator rule). The densities are
a registered buffer, so they travel with state_dict and checkpoints.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

DECAY = 0.95           # instant-ngp's EMA decay per update
OPACITY_THRESHOLD = 0.01  # threestudio's grid_prune_occ_thre


class OccupancyGrid(nn.Module):
    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.register_buffer("density", torch.zeros(resolution, resolution, resolution))

    def _cells(self) -> torch.Tensor:
        """Integer coordinates [r^3, 3] of every cell, x slowest (matching density.view(-1))."""
        r = torch.arange(self.resolution, device=self.density.device)
        return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)

    def _to_world(self, cell_coords: torch.Tensor) -> torch.Tensor:
        return cell_coords / self.resolution * 2.0 - 1.0

    @torch.no_grad()
    def initialize(self, density_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Fill the grid from the density at each cell's point nearest the origin: the blob bias is
        largest there, so every cell the initial blob touches is occupied from the first step."""
        lower = self._to_world(self._cells().float())
        nearest = torch.minimum(torch.maximum(torch.zeros_like(lower), lower), lower + 2.0 / self.resolution)
        self.density.copy_(density_fn(nearest).view_as(self.density))

    @torch.no_grad()
    def update(self, density_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """One update: density at a jittered point of every cell, new = max(old * decay, seen)."""
        cells = self._cells().float()
        points = self._to_world(cells + torch.rand_like(cells))
        seen = density_fn(points).view_as(self.density)
        self.density.copy_(torch.maximum(self.density * DECAY, seen))

    def occupied(self, step_size: float) -> torch.Tensor:
        """Boolean [r, r, r]: cells worth sampling."""
        opacity = 1.0 - torch.exp(-self.density * step_size)
        return opacity > opacity.mean().clamp(max=OPACITY_THRESHOLD)

    def lookup(self, grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """The value of a per-cell grid [r, r, r] (occupied(), or the densities) at points [N, 3]: [N]."""
        cell = ((points + 1.0) * (0.5 * self.resolution)).long().clamp(0, self.resolution - 1)
        return grid[cell[:, 0], cell[:, 1], cell[:, 2]]

    def bounds(self, occupied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space box [lo, hi] ([3] each) around all occupied cells, computed on the device
        without reading anything back (the whole cube when nothing is occupied: then the sampler's
        occupancy test drops every sample anyway)."""
        r = self.resolution
        lo, hi = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            used = occupied.any(dim=other).to(torch.int8)                          # [r] along this axis
            lo.append(used.argmax())                                               # first occupied
            hi.append(r - used.flip(0).argmax())                                   # one past the last
        lo, hi = torch.stack(lo), torch.stack(hi)
        lo = torch.where(hi > lo, lo, torch.zeros_like(lo))                        # none occupied: all
        hi = torch.where(hi > lo, hi, torch.full_like(hi, r))
        return self._to_world(lo.float()), self._to_world(hi.float())
