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

import numpy as np
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


# ------------------------------------------------------------------------------------------------
# The exported surface against the true one (docs/quality.md, "Surface"). Accuracy, completeness and
# F-score follow the usual multi-view-stereo definitions (Knapitsch et al. 2017, Tanks and Temples):
# accuracy is the mean distance of the mesh to the truth, completeness the mean distance of the truth
# to the mesh, and the F-score the harmonic mean of the shares of each within a distance tau.

F_SCORE_TAU = 0.01       # world units: 1% of the unit the catalogue objects are sized in (docs/quality.md)
FLAT_DEGREES = 5.0       # a face counts as flat when its normal is this close to the true one
BOTTOM_SHARE = 0.1       # "the underside": points in the lowest 10% of the object's height


def sample_mesh(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n points uniform by area on a triangle mesh and the face each lies on: ([n, 3], [n])."""
    tri = np.asarray(vertices, np.float64)[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    face = rng.choice(len(faces), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1.0   # fold the unit square onto the triangle: uniform barycentrics
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    t = tri[face]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0]), face


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normals [F, 3] of counter-clockwise faces (zero for degenerate ones)."""
    tri = np.asarray(vertices, np.float64)[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    return np.divide(normal, length, out=np.zeros_like(normal), where=length > 0)


def _point_triangle_distance(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Exact distance from points p [N, 3] to triangles tri [N, 3, 3], pairwise: the closest point by
    the Voronoi regions of the vertices, edges and face (Ericson, Real-Time Collision Detection, 5.1.5)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    dot = lambda x, y: np.einsum("ij,ij->i", x, y)  # noqa: E731
    ab, ac, ap, bp, cp = b - a, c - a, p - a, p - b, p - c
    d1, d2, d3, d4, d5, d6 = dot(ab, ap), dot(ac, ap), dot(ab, bp), dot(ac, bp), dot(ab, cp), dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v, w = np.nan_to_num(vb / denom), np.nan_to_num(vc / denom)
        closest = a + v[:, None] * ab + w[:, None] * ac                               # inside the face
        cases = [  # later cases win: from the face region out to the vertex regions
            ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + np.nan_to_num(d1 / (d1 - d3))[:, None] * ab),       # edge ab
            ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + np.nan_to_num(d2 / (d2 - d6))[:, None] * ac),       # edge ac
            ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),
             b + np.nan_to_num((d4 - d3) / ((d4 - d3) + (d5 - d6)))[:, None] * (c - b)),                # edge bc
            ((d1 <= 0) & (d2 <= 0), a), ((d3 >= 0) & (d4 <= d3), b), ((d6 >= 0) & (d5 <= d6), c),     # vertices
        ]
    for mask, point in cases:
        closest = np.where(mask[:, None], point, closest)
    return np.linalg.norm(p - closest, axis=1)


def point_mesh_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, k: int = 16) -> np.ndarray:
    """Exact distance [N] from each point to a triangle mesh. Candidates are the faces with the k
    nearest centroids; face j is at least |p - c_j| - r_j away (c_j its centroid, r_j its largest
    centroid-to-vertex distance), so a face further out than the k-th centroid is at least d_k - r
    away (r: the largest r_j). Points whose best distance is not below that bound are answered again
    with the faces in reach whose own bound is below it (on a decimated mesh a few long faces make r
    large, and the exact test of every face in reach was most of the time)."""
    from scipy.spatial import cKDTree

    points, tri = np.asarray(points, np.float64), np.asarray(vertices, np.float64)[faces]
    centroid = tri.mean(axis=1)
    radius = np.linalg.norm(tri - centroid[:, None], axis=2).max(axis=1)
    reach = float(radius.max())
    tree = cKDTree(centroid)
    k = min(k, len(faces))
    centre_distance, nearest = tree.query(points, k=k)
    centre_distance, nearest = centre_distance.reshape(len(points), k), nearest.reshape(len(points), k)
    exact = _point_triangle_distance(np.repeat(points, k, axis=0), tri[nearest.reshape(-1)]).reshape(-1, k)
    best = exact.min(axis=1)
    unsure = np.nonzero(best > centre_distance[:, -1] - reach)[0] if k < len(faces) else np.zeros(0, int)
    if len(unsure):
        candidates = tree.query_ball_point(points[unsure], best[unsure] + reach)
        owner = np.repeat(unsure, [len(c) for c in candidates])
        face = np.concatenate(candidates).astype(np.int64)
        near = np.linalg.norm(points[owner] - centroid[face], axis=1) - radius[face] < best[owner]
        owner, face = owner[near], face[near]
        np.minimum.at(best, owner, _point_triangle_distance(points[owner], tri[face]))
    return best


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Degrees between unit vectors a and b, row by row."""
    return np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)))


def _region_stats(signed: np.ndarray, angle: np.ndarray, completeness: np.ndarray) -> dict:
    """Accuracy (mean |sdf|), signed offset (mean, std; + is outside) and normal error of the mesh
    samples in a region, with the completeness of the true samples in it."""
    if len(signed) == 0:
        return {"samples": 0}
    return {"samples": int(len(signed)), "accuracy": float(np.abs(signed).mean()), "offset": float(signed.mean()),
            "offset_std": float(signed.std()), "normal_error_mean": float(angle.mean()),
            "completeness": float(completeness.mean()) if len(completeness) else None}


def _cube_faces(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The outward normal [N, 3] of the cube face each point sits on (the face of the axis along which
    the point lies furthest out: the cube is axis-aligned), and that face's index [N] in CUBE_FACES."""
    axis = np.abs(points).argmax(axis=1)
    sign = np.sign(points[np.arange(len(points)), axis])
    face = np.zeros_like(points)
    face[np.arange(len(points)), axis] = sign
    return face, 2 * axis + (sign > 0)


CUBE_FACES = ("-x", "+x", "-y", "+y", "-z", "+z")   # -z: the underside


def _cube_flat_share(points: np.ndarray, normals: np.ndarray) -> float:
    """Share of the samples whose normal is within FLAT_DEGREES of the cube face they sit on."""
    return float((_angles(normals, _cube_faces(points)[0]) <= FLAT_DEGREES).mean())


def cube_face_flatness(points: np.ndarray, normals: np.ndarray) -> dict:
    """Per cube face (CUBE_FACES): the share of its samples within FLAT_DEGREES of its normal and
    their mean normal error in degrees, so the underside (-z) can be compared with the other five."""
    target, index = _cube_faces(points)
    angle = _angles(normals, target)
    return {name: {"flat_share": float((angle[index == k] <= FLAT_DEGREES).mean()),
                   "normal_error_mean": float(angle[index == k].mean())}
            for k, name in enumerate(CUBE_FACES) if (index == k).any()}


def mesh_iou(vertices: np.ndarray, faces: np.ndarray, obj: CatalogObject, resolution: int = 64) -> float:
    """Volume IoU of a closed mesh (inside by ray parity) with the object, on the cell centres of a
    resolution^3 grid over [-1, 1]^3."""
    from .export.raster import mesh_occupancy

    points = grid_points(resolution)
    inside = mesh_occupancy(np.asarray(vertices, np.float64), faces, points[:resolution, 2].numpy()).reshape(-1)
    return volume_iou(torch.from_numpy(inside), evaluate(obj.sdf, points) < 0)


@torch.no_grad()
def surface_metrics(vertices: np.ndarray, faces: np.ndarray, obj: CatalogObject, n: int = 20000,
                    tau: float = F_SCORE_TAU, seed: int = 0) -> dict:
    """A mesh (backend world, counter-clockwise faces) against the object's exact surface:
    accuracy (mean |sdf| of area-uniform mesh samples: the catalogue SDFs are exact distances),
    completeness (mean distance of true surface samples to the mesh), F-score at tau, normal error
    (degrees between the face normal and the SDF gradient at each sample, so area-weighted; and per
    face at the centroid, unweighted), the area share within FLAT_DEGREES, for the cube the share
    within FLAT_DEGREES of its own face (and per face, under "faces"), volume IoU, and the same by
    region: bottom (the lowest BOTTOM_SHARE of the object's height), top and sides. docs/quality.md,
    "Surface"."""
    vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    samples, face = sample_mesh(vertices, faces, n, seed)
    normals = face_normals(vertices, faces)
    as_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    signed = obj.sdf(as_torch(samples)).double().numpy()
    angle = _angles(normals[face], sdf_gradient(obj.sdf, as_torch(samples)).double().numpy())
    centroids = vertices[faces].mean(axis=1)
    face_angle = _angles(normals, sdf_gradient(obj.sdf, as_torch(centroids)).double().numpy())
    truth = surface_points(obj, n, seed + 1).double().numpy()
    reach = point_mesh_distance(truth, vertices, faces)
    precision, recall = float((np.abs(signed) < tau).mean()), float((reach < tau).mean())
    z_low, z_high = float(truth[:, 2].min()), float(truth[:, 2].max())
    band = BOTTOM_SHARE * (z_high - z_low)
    regions = {}
    for name, mine, theirs in (("bottom", samples[:, 2] < z_low + band, truth[:, 2] < z_low + band),
                               ("top", samples[:, 2] > z_high - band, truth[:, 2] > z_high - band)):
        regions[name] = _region_stats(signed[mine], angle[mine], reach[theirs])
    side_mine = (samples[:, 2] >= z_low + band) & (samples[:, 2] <= z_high - band)
    side_theirs = (truth[:, 2] >= z_low + band) & (truth[:, 2] <= z_high - band)
    regions["sides"] = _region_stats(signed[side_mine], angle[side_mine], reach[side_theirs])
    result = {
        "accuracy": float(np.abs(signed).mean()), "offset": float(signed.mean()), "completeness": float(reach.mean()),
        "tau": tau, "precision": precision, "recall": recall,
        "fscore": 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall),
        "normal_error_mean": float(angle.mean()), "normal_error_median": float(np.median(angle)),
        "normal_error_face_mean": float(face_angle.mean()),
        "within_5deg": float((angle <= FLAT_DEGREES).mean()),
        "z_min": float(vertices[:, 2].min()), "true_z_min": z_low,
        "volume_iou": mesh_iou(vertices, faces, obj), "regions": regions,
    }
    if obj.shape == "cube":
        result["flat_share"] = _cube_flat_share(samples, normals[face])
        result["faces"] = cube_face_flatness(samples, normals[face])
    return result
