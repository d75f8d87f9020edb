"""Ray marching in PyTorch (nerfacc's samplers are CUDA-only): uniform steps through the scene cube,
restricted to the occupancy grid's occupied cells, returned packed (all samples of all rays in one
flat list, ray by ray, near to far)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .occupancy import OccupancyGrid


@dataclass
class RaySamples:
    ray: torch.Tensor     # [S] long: which ray each sample belongs to (non-decreasing)
    t: torch.Tensor       # [S] distance along the ray of the sample's midpoint
    points: torch.Tensor  # [S, 3]

    def __len__(self) -> int:
        return self.ray.shape[0]

    def select(self, keep: torch.Tensor) -> "RaySamples":
        """The samples where the boolean mask `keep` [S] is true (one known host sync)."""
        with known_sync():
            index = keep.nonzero().squeeze(1)
        return RaySamples(self.ray[index], self.t[index], self.points[index])


def intersect_box(origins: torch.Tensor, dirs: torch.Tensor, lo, hi) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab test: entry and exit distances [R] of rays with the box [lo, hi] (entry clamped at 0, the
    camera). A ray misses when exit <= entry."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (lo - origins) / safe
    t1 = (hi - origins) / safe
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def march(origins: torch.Tensor, dirs: torch.Tensor, step: float, max_samples: int,
          grid: OccupancyGrid | None = None, occupied: torch.Tensor | None = None,
          jitter: bool = False) -> RaySamples:
    """Samples t_k = entry + (k + u) step, k < max_samples, inside the cube [-1, 1]^3, where u = 0.5
    (or uniform per ray when jittering, to avoid banding while training). With an occupancy grid, only
    samples inside occupied cells are kept; the occupied cells' bounding box is used first to avoid
    generating the samples of the empty space around it at all."""
    device = origins.device
    n_rays = origins.shape[0]
    entry, exit_ = intersect_box(origins, dirs, -1.0, 1.0)
    offset = torch.rand(n_rays, device=device) if jitter else torch.full((n_rays,), 0.5, device=device)
    # k_first <= k < k_end are the samples to generate on each ray.
    k_end = torch.ceil((exit_ - entry) / step - offset).clamp(0, max_samples)
    k_first = torch.zeros_like(k_end)
    if occupied is not None:
        lo, hi = grid.bounds(occupied)
        box_entry, box_exit = intersect_box(origins, dirs, lo, hi)
        k_first = torch.ceil((box_entry - entry) / step - offset).clamp(min=0)
        k_end = torch.minimum(k_end, torch.ceil((box_exit - entry) / step - offset))
    counts = (k_end - k_first).clamp(min=0).long()
    with known_sync():  # the packed list's length
        total = int(counts.sum())
    if total == 0:
        return _empty(device)
    ray = torch.repeat_interleave(torch.arange(n_rays, device=device), counts, output_size=total)
    first_of_ray = (torch.cumsum(counts, 0) - counts)[ray]
    k = k_first[ray] + (torch.arange(ray.shape[0], device=device) - first_of_ray)
    t = entry[ray] + (k + offset[ray]) * step
    samples = RaySamples(ray, t, origins[ray] + t[:, None] * dirs[ray])
    if occupied is not None:
        samples = samples.select(grid.lookup(occupied, samples.points))
    return samples


@contextmanager
def known_sync():
    """Marks a host sync that packed sampling cannot avoid: how many samples a render has is data,
    and the next tensors' sizes depend on it (nerfacc syncs at the same points). On CUDA, CUDA's
    sync-debug mode is switched off inside, so a test running steps with it set to "error"
    (tests/test_train.py, its sync-debug test) fails on any other sync. The render has three: the sample count here,
    the occupancy selection and the early-stop selection (RaySamples.select, model._drop_occluded)."""
    if not torch.cuda.is_available():
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def _empty(device) -> RaySamples:
    return RaySamples(torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device),
                      torch.zeros(0, 3, device=device))
