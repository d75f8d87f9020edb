"""Ground-truth measurements against the catalog objects of the built-in prior (docs/methods.md, "Exact priors").

Because the shapes prior's world is known exactly, a result is measured, not eyeballed: volume IoU
of a trained field (or exported mesh) against the object's SDF, Chamfer distance between surface
samples, albedo error on the true surface, and which named colour a trained field ended up with.
Functions take plain callables (points [N, 3] -> [N] densities or [N, 3] albedos), so a NeRF, a
baked mesh or the object itself can be measured the same way. Points are passed on the CPU; wrap
a model on another device as `lambda p: model.density(p.to(device))`.
"""
from __future__ import annotations

import functools
from collections import Counter
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from .priors.shapes_world import SHAPE_RADIUS, SHAPES, CatalogObject, nearest_color, sdf_gradient

PointFn = Callable[[torch.Tensor], torch.Tensor]
CHUNK = 65536


def grid_points(resolution: int, bound: float = 1.0) -> torch.Tensor:
    """Cell centres of a resolution^3 grid over [-bound, bound]^3, [R^3, 3], x-major (index = (i*R + j)*R + k)."""
    axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) * (2.0 * bound / resolution) - bound
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


@torch.no_grad()
def evaluate(fn: PointFn, points: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """fn over points in chunks, without a graph, on the CPU."""
    return torch.cat([fn(points[i:i + chunk]).detach().float().cpu() for i in range(0, len(points), chunk)])


def volume_iou(inside_a: torch.Tensor, inside_b: torch.Tensor) -> float:
    """|A and B| / |A or B| of two boolean occupancy grids (1.0 when both are empty: they agree)."""
    union = (inside_a | inside_b).sum().item()
    return 1.0 if union == 0 else (inside_a & inside_b).sum().item() / union


def occupancy(density_fn: PointFn, threshold: float, resolution: int = 64) -> torch.Tensor:
    """Boolean [R^3] grid: density > threshold at the cell centres of [-1, 1]^3."""
    return evaluate(density_fn, grid_points(resolution)) > threshold


def field_iou(density_fn: PointFn, obj: CatalogObject, threshold: float, resolution: int = 64) -> float:
    """Volume IoU of a density field (occupied = density > threshold) with the object (sdf < 0)."""
    return volume_iou(occupancy(density_fn, threshold, resolution), evaluate(obj.sdf, grid_points(resolution)) < 0)


def surface_points(obj: CatalogObject, n: int, seed: int = 0) -> torch.Tensor:
    """n points on the object's surface, about uniform by area, [n, 3]. They depend only on the
    shape, so objects of one shape share them (and a sweep over colours samples once)."""
    return _shape_surface_points(obj.shape, n, seed).clone()


@functools.lru_cache(maxsize=32)
@torch.no_grad()
def _shape_surface_points(shape: str, n: int, seed: int, shell: float = 0.02, tolerance: float = 1e-4) -> torch.Tensor:
    # Uniform samples in the thin shell |sdf| < shell (volume ~ area * 2 * shell, so about uniform by
    # area) projected onto the surface by Newton steps p <- p - sdf(p) grad(p).
    sdf = SHAPES[shape]
    generator = torch.Generator().manual_seed(seed)
    kept, count = [], 0
    while count < n:
        points = (torch.rand(CHUNK, 3, generator=generator) * 2.0 - 1.0) * (SHAPE_RADIUS[shape] + shell)
        points = points[sdf(points).abs() < shell]
        for _ in range(4):
            points = points - sdf(points)[:, None] * sdf_gradient(sdf, points)
        points = points[sdf(points).abs() < tolerance]  # drops the rare point stuck on an edge
        kept.append(points)
        count += len(points)
    return torch.cat(kept)[:n]


def albedo_error(albedo_fn: PointFn, obj: CatalogObject, n: int = 4096, seed: int = 0) -> float:
    """Mean absolute RGB error (0..1) of albedo_fn against the object's albedo on its surface."""
    points = surface_points(obj, n, seed)
    return (evaluate(albedo_fn, points) - obj.albedo(points)).abs().mean().item()


@torch.no_grad()
def chamfer_distance(points_a: torch.Tensor, points_b: torch.Tensor) -> float:
    """Symmetric Chamfer distance: the mean of (mean distance from each point of A to its nearest in
    B) and the same from B to A. World units."""
    def one_way(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        # cdist's fast matrix-product form (in float64, so near-ties resolve right) finds the nearest
        # point; the distance is then recomputed directly, as that form loses precision near zero.
        chunk = max(1, 2 ** 22 // len(dst))  # rows per block: a 32 MiB distance matrix at most
        nearest = torch.cat([torch.cdist(src[i:i + chunk], dst).argmin(dim=1) for i in range(0, len(src), chunk)])
        return (src - dst[nearest]).norm(dim=-1).mean()
    a, b = points_a.double().cpu(), points_b.double().cpu()
    return 0.5 * (one_way(a, b) + one_way(b, a)).item()


def best_match(density_fn: PointFn, objects: Sequence[CatalogObject], threshold: float, resolution: int = 64,
               albedo_fn: PointFn | None = None) -> tuple[CatalogObject, float]:
    """The object of an ambiguous prompt's set that a field became, and its IoU. Geometry picks the
    shape (highest IoU); objects of that shape differ only in albedo, so with albedo_fn the lowest
    albedo error picks among them (without it, the first of them)."""
    inside = occupancy(density_fn, threshold, resolution)
    points = grid_points(resolution)
    ious: dict[str, float] = {}
    for shape in dict.fromkeys(o.shape for o in objects):
        sample = next(o for o in objects if o.shape == shape)
        ious[shape] = volume_iou(inside, evaluate(sample.sdf, points) < 0)
    shape = max(ious, key=ious.get)
    same_shape = [o for o in objects if o.shape == shape]
    if albedo_fn is not None and len(same_shape) > 1:
        best = min(same_shape, key=lambda o: albedo_error(albedo_fn, o))
    else:
        best = same_shape[0]
    return best, ious[shape]


def field_surface_points(density_fn: PointFn, threshold: float, resolution: int = 64) -> torch.Tensor:
    """Centres of the occupied cells next to an empty one: a field's own surface, [M, 3]."""
    inside = occupancy(density_fn, threshold, resolution).view(1, 1, *(resolution,) * 3).float()
    # a cell is on the surface if it is occupied and one of its 26 neighbours is not (outside the grid is empty)
    eroded = -F.max_pool3d(-F.pad(inside, (1,) * 6), kernel_size=3, stride=1, padding=0)
    cross = inside * (1.0 - eroded)
    return grid_points(resolution)[cross.flatten() > 0]


def field_color(density_fn: PointFn, albedo_fn: PointFn, threshold: float, resolution: int = 64) -> str | None:
    """The named catalog colour a trained field shows: the most common nearest colour of its albedo
    over its own surface (a majority, so a pattern's stripes or shading noise do not mix colours).
    None for an empty field."""
    points = field_surface_points(density_fn, threshold, resolution)
    if len(points) == 0:
        return None
    return Counter(nearest_color(evaluate(albedo_fn, points))).most_common(1)[0][0]


def distinct_colors(fields: Iterable[tuple[PointFn, PointFn]], threshold: float, resolution: int = 64) -> list[str]:
    """The distinct named colours reached by several trained fields (density_fn, albedo_fn), e.g. one
    per seed for "a sphere": the diversity a method shows on an ambiguous prompt."""
    colors = {field_color(density, albedo, threshold, resolution) for density, albedo in fields}
    return sorted(c for c in colors if c is not None)
