"""From a density grid to a raw surface (marching cubes at a threshold), and how the field is asked.

Points are in the backend world ([-bound, bound]^3, +Z up, front = +X); the field is queried in
chunks under torch.no_grad so memory stays bounded at any grid resolution.
"""
from __future__ import annotations

from typing import Callable

import mcubes
import numpy as np
import torch

from ..errors import UserError

# threestudio's fixed level (softplus density 25). Meshes choose their level from the field's renders
# (level.py, docs/export.md "The surface level"); this is the fallback of a measurement on a field that
# no view sees as opaque.
DEFAULT_THRESHOLD = 25.0
DEFAULT_CHUNK = 1 << 18    # points per field query


def field_device(field) -> torch.device:
    """Where the field's tensors live, so query points are made there."""
    if isinstance(field, torch.nn.Module):
        for tensor in list(field.parameters()) + list(field.buffers()):
            return tensor.device
    return torch.device(getattr(field, "device", "cpu"))


@torch.no_grad()
def query(fn: Callable[[torch.Tensor], torch.Tensor], points: np.ndarray, device: torch.device,
          chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """fn(points) for points [N, 3] (numpy), chunk by chunk; returns numpy float32 [N, ...]."""
    out = []
    for start in range(0, len(points), chunk):
        batch = torch.as_tensor(points[start:start + chunk], dtype=torch.float32, device=device)
        out.append(fn(batch).float().cpu().numpy())
    if not out:
        return np.zeros((0,), np.float32)
    return np.concatenate(out)


def check_density(grid: np.ndarray, threshold: float) -> None:
    """An empty, full or broken field has no surface to export: say why and what to do."""
    if not np.isfinite(grid).all():
        raise UserError("the field's density has NaN or infinite values, so training diverged; "
                        "resume from an earlier checkpoint or lower the learning rate")
    peak = float(grid.max())
    if peak <= 0.0:
        raise UserError("the field is empty (zero density everywhere), so there is no surface to export; "
                        "train longer, or check the run's log for why nothing formed")
    if peak <= threshold:
        raise UserError(f"nothing in the field is denser than the threshold {threshold:g} (the densest "
                        f"point is {peak:.3g}); train longer or lower --threshold below {peak:.3g}")
    if float(grid.min()) > threshold:
        raise UserError(f"the whole box is denser than the threshold {threshold:g}, so there is no "
                        f"surface; raise --threshold above {float(grid.min()):.3g} or train longer")


def marching_cubes(grid: np.ndarray, threshold: float, bound: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The threshold level set of a density grid: vertices [V, 3] float64 (world), faces [F, 3] int64,
    wound so normals point out of the dense region (positive enclosed volume)."""
    check_density(grid, threshold)
    # One layer of "empty" around the grid closes the surface where the object touches the box.
    padded = np.pad(grid, 1, mode="constant", constant_values=min(float(grid.min()), threshold) - 1.0)
    vertices, faces = mcubes.marching_cubes(padded, threshold)
    step = 2.0 * bound / (grid.shape[0] - 1)
    vertices = (vertices - 1.0) * step - bound
    faces = faces.astype(np.int64)
    tri = vertices[faces]
    signed_volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0
    if signed_volume < 0:
        faces = faces[:, ::-1].copy()
    return vertices, faces
