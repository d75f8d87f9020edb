"""The field's density on the marching-cubes grid, queried only where the surface can be.

A NeRF on the CPU answers ~30k points/s, so a dense 256^3 grid (16.7M points) takes minutes. But
marching cubes reads only the cells the surface crosses. So: sample every `stride`-th node
(coarse), fill the rest by trilinear interpolation, query exactly every node of the coarse cells
that hold a sign change (and their neighbours), and keep growing along the surface while a
not-yet-queried coarse cell still shows one. Every cell marching cubes turns into triangles then
has exact values; what is lost is a closed piece smaller than a coarse cell that no coarse node
sees, i.e. a floater the cleanup would drop anyway.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .extract import DEFAULT_CHUNK, field_device, query


def grid_axis(resolution: int, bound: float = 1.0) -> np.ndarray:
    """The marching-cubes grid nodes along one axis: both faces of the box included."""
    return np.linspace(-bound, bound, resolution)


def density_grid(field, resolution: int, threshold: float, bound: float = 1.0, chunk: int = DEFAULT_CHUNK,
                 stride: int = 4) -> tuple[np.ndarray, int]:
    """field.density on the grid_axis^3 nodes: ([R, R, R] float32 indexed [x, y, z], points queried).
    Exact wherever a cell is crossed by the `threshold` level set; stride 1 queries every node."""
    axis = grid_axis(resolution, bound)
    coarse = np.unique(np.r_[np.arange(0, resolution, stride), resolution - 1])   # fine indices of coarse nodes
    if stride <= 1 or len(coarse) < 3:
        return _dense(field, axis, chunk), resolution ** 3
    device = field_device(field)
    values = query(field.density, _points(axis, np.ix_(coarse, coarse, coarse)), device, chunk)
    grid = _upsample(values.reshape((len(coarse),) * 3), coarse, resolution)
    grid[np.ix_(coarse, coarse, coarse)] = values.reshape((len(coarse),) * 3)
    known = np.zeros(grid.shape, bool)
    known[np.ix_(coarse, coarse, coarse)] = True
    queried = values.size
    done = np.zeros((len(coarse) - 1,) * 3, bool)   # coarse cells whose nodes are all exact
    todo = _dilate(_crossed_blocks(grid > threshold, coarse))
    while todo.any():
        new = _block_nodes(todo, coarse, resolution) & ~known
        grid[new] = query(field.density, _points(axis, np.nonzero(new)), device, chunk)
        known |= new
        queried += int(new.sum())
        done |= todo
        # the surface may leave the exact region: follow it into the coarse cells it enters
        todo = _crossed_blocks(grid > threshold, coarse) & ~done
    return grid, queried


def fill_cavities(grid: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """(grid, nodes filled): every region below `threshold` that does not reach the box's faces is a
    cavity closed inside the object, which no camera can see; its nodes are raised to the largest
    density, so marching cubes draws the outer shell only. A field's unseen inside is not pushed to
    be dense, so it can hold low-density pockets whose walls would come out as hidden inner
    surfaces (docs/export.md, "Hidden inner surfaces"). Openings to the outside, like a torus's
    hole, reach the faces and stay as they are."""
    inside = grid > threshold
    cavity = ndimage.binary_fill_holes(inside) & ~inside
    count = int(cavity.sum())
    if count:
        grid = grid.copy()
        grid[cavity] = grid[inside].max()
    return grid, count


@torch.no_grad()
def _dense(field, axis: np.ndarray, chunk: int) -> np.ndarray:
    """Every node, a few x-slabs at a time, so the full point grid never exists in memory."""
    n = len(axis)
    device = field_device(field)
    t = torch.as_tensor(axis, dtype=torch.float32, device=device)
    ys, zs = torch.meshgrid(t, t, indexing="ij")
    plane = torch.stack([ys.reshape(-1), zs.reshape(-1)], dim=-1)
    slabs = max(1, chunk // (n * n))
    grid = np.empty((n, n, n), np.float32)
    for i in range(0, n, slabs):
        xs = t[i:i + slabs]
        points = torch.cat([xs.repeat_interleave(len(plane))[:, None], plane.repeat(len(xs), 1)], dim=-1)
        grid[i:i + len(xs)] = field.density(points).float().reshape(len(xs), n, n).cpu().numpy()
    return grid


def _points(axis: np.ndarray, index) -> np.ndarray:
    """World points [N, 3] of grid nodes given as np.ix_ (a sub-grid) or np.nonzero (a list)."""
    i, j, k = np.broadcast_arrays(*index)
    return np.stack([axis[i], axis[j], axis[k]], axis=-1).reshape(-1, 3)


def _upsample(values: np.ndarray, coarse: np.ndarray, resolution: int) -> np.ndarray:
    """Trilinear interpolation of coarse-node values to every fine node (separable, axis by axis)."""
    fine = np.arange(resolution)
    cell = np.clip(np.searchsorted(coarse, fine, side="right") - 1, 0, len(coarse) - 2)
    weight = ((fine - coarse[cell]) / (coarse[cell + 1] - coarse[cell])).astype(np.float32)
    out = values.astype(np.float32)
    for ax in range(3):
        shape = [1, 1, 1]
        shape[ax] = resolution
        w = weight.reshape(shape)
        out = np.take(out, cell, axis=ax) * (1 - w) + np.take(out, cell + 1, axis=ax) * w
    return out


def _crossed_blocks(inside: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Coarse cells holding a fine cell whose 8 nodes are not all on one side of the threshold."""
    any_in = inside.copy()
    all_in = inside.copy()
    for ax in range(3):   # corners of each fine cell: reduce over node pairs along each axis
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        any_in = any_in[tuple(lo)] | any_in[tuple(hi)]
        all_in = all_in[tuple(lo)] & all_in[tuple(hi)]
    mixed = any_in & ~all_in                                   # fine cells, [R-1]^3
    for ax in range(3):
        mixed = np.logical_or.reduceat(mixed, coarse[:-1], axis=ax)
    return mixed


def _dilate(cells: np.ndarray) -> np.ndarray:
    """Grow a boolean 3D mask by one cell (26-neighbourhood)."""
    out = cells.copy()
    for ax in range(3):
        grown = out.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        grown[tuple(lo)] |= out[tuple(hi)]
        grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def _block_nodes(cells: np.ndarray, coarse: np.ndarray, resolution: int) -> np.ndarray:
    """Fine nodes (corners included) of the marked coarse cells, [R, R, R] bool."""
    counts = np.diff(coarse)
    fine_cells = cells
    for ax in range(3):
        fine_cells = np.repeat(fine_cells, counts, axis=ax)      # [R-1]^3 fine cells
    nodes = np.zeros((resolution,) * 3, bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                nodes[dx:resolution - 1 + dx, dy:resolution - 1 + dy, dz:resolution - 1 + dz] |= fine_cells
    return nodes
