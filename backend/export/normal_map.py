"""A tangent-space normal map for the decimated mesh: the full-resolution surface's shading baked
into the low-poly mesh's UV atlas (docs/export.md, "Low poly with a normal map").

Tangents: per vertex from the UV derivatives, in the MikkTSpace style (Mikkelsen 2008, "Simulation of
wrinkled surfaces revisited"): each triangle's tangent and bitangent solve
    e1 = du1 T + dv1 B,  e2 = du2 T + dv2 B       (Lengyel 2001)
for its edges e1, e2 and UV differences; they are summed per vertex weighted by the corner angle,
the tangent is made orthogonal to the vertex normal (Gram-Schmidt) and unit, and w = +-1 says on
which side of the normal the bitangent lies, so mirrored UV islands stay right:
    bitangent = w * cross(normal, tangent)         (glTF 2.0, meshes, TANGENT)
The V axis is taken pointing up the image (v_up = 1 - v in glTF's UVs), the OpenGL convention that
glTF's normalTexture (+Y up), Blender and MikkTSpace use.

Bake: every texel of the atlas gives a point on the low-poly surface and the frame (t, b, n) that a
renderer builds there from the interpolated vertex normal and tangent. The full-resolution mesh's
interpolated normal h at the closest point to it is written as RGB = 0.5 (t.h, b.h, n.h) + 0.5.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .raster import rasterize_triangles
from .uv_bake import dilate

NEAREST_FACES = 8      # high-resolution triangles (by centroid) searched for each texel's closest point
BATCH = 1 << 15        # texels per closest-point batch: bounds memory


def tangent_frames(positions: np.ndarray, normals: np.ndarray, faces: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Per-vertex tangents [V, 4]: xyz unit and orthogonal to the unit normal, w = +1 or -1 (the
    bitangent is w * cross(normal, tangent)). uv in glTF's convention (v down the image)."""
    positions, normals = np.asarray(positions, np.float64), np.asarray(normals, np.float64)
    uv_up = np.column_stack([uv[:, 0], 1.0 - uv[:, 1]])
    p, t = positions[faces], uv_up[faces]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    inverse = np.where(np.abs(det) > 1e-20, 1.0 / np.where(det == 0.0, 1.0, det), 0.0)[:, None]
    face_t = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * inverse
    face_b = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * inverse
    tangent, bitangent = np.zeros_like(positions), np.zeros_like(positions)
    for corner in range(3):
        weight = _corner_angle(p, corner)[:, None]
        np.add.at(tangent, faces[:, corner], _unit(face_t) * weight)
        np.add.at(bitangent, faces[:, corner], _unit(face_b) * weight)
    tangent = _orthogonal_unit(tangent, normals)
    w = np.where(np.einsum("ij,ij->i", np.cross(normals, tangent), bitangent) < 0.0, -1.0, 1.0)
    return np.column_stack([tangent, w])


def bake_normal_map(detail_vertices: np.ndarray, detail_faces: np.ndarray, detail_normals: np.ndarray,
                    positions: np.ndarray, normals: np.ndarray, tangents: np.ndarray, faces: np.ndarray,
                    uv: np.ndarray, texture_size: int) -> tuple[np.ndarray, float]:
    """The detail mesh's normals in the low-poly mesh's tangent space: uint8 [S, S, 3] (row 0 = v 0)
    and the fraction of texels the charts cover. Empty texels are filled from the charts (dilation,
    as the albedo texture) and renormalized, so filtering at chart borders reads sensible normals."""
    size = int(texture_size)
    x, y, ids, bary = rasterize_triangles(uv[faces] * size, size, size)
    texel, first = np.unique(y * size + x, return_index=True)   # a texel on a shared edge: bake once
    corners, bary = faces[ids[first]], bary[first]
    point = np.einsum("nk,nkd->nd", bary, positions[corners])
    n = _unit(np.einsum("nk,nkd->nd", bary, normals[corners]))
    t = _orthogonal_unit(np.einsum("nk,nkd->nd", bary, tangents[corners, :3]), n)
    b = np.cross(n, t) * tangents[corners[:, 0], 3:4]          # w is the same on a triangle's corners
    high = closest_normals(detail_vertices, detail_faces, detail_normals, point)
    local = np.stack([np.einsum("ij,ij->i", high, axis) for axis in (t, b, n)], axis=1)
    image = np.zeros((size * size, 3), np.float32)
    image[texel] = local
    filled = np.zeros(size * size, bool)
    filled[texel] = True
    image = dilate(image.reshape(size, size, 3), filled.reshape(size, size))
    image[~filled.reshape(size, size)] = _unit(image[~filled.reshape(size, size)].astype(np.float64),
                                               fallback=(0.0, 0.0, 1.0))
    return encode(image), len(texel) / float(size * size)


def encode(local: np.ndarray) -> np.ndarray:
    """Tangent-space unit vectors -> RGB uint8 = round(255 (0.5 n + 0.5))."""
    return np.round((np.clip(local, -1.0, 1.0) * 0.5 + 0.5) * 255.0).astype(np.uint8)


def decode(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 -> unit tangent-space vectors (what a renderer does before its TBN transform)."""
    return _unit(rgb.astype(np.float64) / 255.0 * 2.0 - 1.0, fallback=(0.0, 0.0, 1.0))


def closest_normals(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Unit normals [N, 3] of a mesh at the closest point to each of `points`: the vertex normals
    interpolated there. The closest point is searched on the NEAREST_FACES triangles whose centroids
    are nearest (the full-resolution marching-cubes triangles are all about a grid cell in size)."""
    vertices, normals = np.asarray(vertices, np.float64), np.asarray(normals, np.float64)
    tri = vertices[faces]
    k = min(NEAREST_FACES, len(faces))
    tree = cKDTree(tri.mean(axis=1))
    out = np.empty((len(points), 3))
    for start in range(0, len(points), BATCH):
        batch = points[start:start + BATCH]
        _, near = tree.query(batch, k=k)
        near = near.reshape(len(batch), k)
        repeated = np.repeat(batch, k, axis=0)
        closest, bary = closest_on_triangles(repeated, tri[near.ravel()])
        gap = closest - repeated
        distance = np.einsum("ij,ij->i", gap, gap).reshape(len(batch), k)
        best = near[np.arange(len(batch)), distance.argmin(axis=1)]
        best_bary = bary.reshape(len(batch), k, 3)[np.arange(len(batch)), distance.argmin(axis=1)]
        out[start:start + len(batch)] = np.einsum("nk,nkd->nd", best_bary, normals[faces[best]])
    return _unit(out, fallback=(0.0, 0.0, 1.0))


def closest_on_triangles(points: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The closest point of each triangle tri [N, 3, 3] to points [N, 3], and its barycentrics: the
    projection onto the plane when it falls inside, else the nearest of the three edges' closest points."""
    dot = lambda x, y: np.einsum("ij,ij->i", x, y)  # noqa: E731
    a, u, v = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    w = points - a
    uu, uv, vv, wu, wv = dot(u, u), dot(u, v), dot(v, v), dot(w, u), dot(w, v)
    det = np.maximum(uu * vv - uv * uv, 1e-30)
    s, t = (vv * wu - uv * wv) / det, (uu * wv - uv * wu) / det
    bary = np.stack([1.0 - s - t, s, t], axis=1)
    out = np.nonzero((bary < 0.0).any(axis=1))[0]      # projections outside: the nearest edge point
    p, corner, best = points[out], tri[out], np.full(len(out), np.inf)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        edge = corner[:, j] - corner[:, i]
        f = np.clip(dot(p - corner[:, i], edge) / np.maximum(dot(edge, edge), 1e-30), 0.0, 1.0)
        gap = p - corner[:, i] - f[:, None] * edge
        distance = dot(gap, gap)
        better = distance < best
        edge_bary = np.zeros((better.sum(), 3))
        edge_bary[:, i], edge_bary[:, j] = 1.0 - f[better], f[better]
        bary[out[better]], best[better] = edge_bary, distance[better]
    return np.einsum("nk,nkd->nd", bary, tri), bary


def _corner_angle(tri: np.ndarray, corner: int) -> np.ndarray:
    """The angle of every triangle at one corner (MikkTSpace's per-corner weight)."""
    a = tri[:, (corner + 1) % 3] - tri[:, corner]
    b = tri[:, (corner + 2) % 3] - tri[:, corner]
    cosine = np.einsum("ij,ij->i", _unit(a), _unit(b))
    return np.arccos(np.clip(cosine, -1.0, 1.0))


def _orthogonal_unit(tangent: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Gram-Schmidt: tangent minus its part along the (unit) normal, made unit. Where nothing is left
    (no UV gradient, or a tangent along the normal), any unit vector orthogonal to the normal."""
    tangent = tangent - np.einsum("ij,ij->i", tangent, normals)[:, None] * normals
    length = np.linalg.norm(tangent, axis=1)
    weak = length < 1e-9
    if weak.any():
        axis = np.where(np.abs(normals[weak, 0:1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
        tangent[weak] = np.cross(normals[weak], np.cross(axis, normals[weak]))
        length[weak] = np.linalg.norm(tangent[weak], axis=1)
    return tangent / length[:, None]


def _unit(vectors: np.ndarray, fallback=None) -> np.ndarray:
    """Rows made unit length; zero rows stay zero, or become `fallback` when given."""
    length = np.linalg.norm(vectors, axis=1, keepdims=True)
    out = vectors / np.maximum(length, 1e-30)
    if fallback is not None:
        out[length[:, 0] < 1e-12] = fallback
    return out


# ---- What a renderer shows: for measuring a baked map (tests/test_normal_map.py, bench/bench_normal_map.py) ----

def surface_samples(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n points uniform by area on a mesh, as (face index [n], barycentrics [n, 3])."""
    tri = np.asarray(vertices, np.float64)[faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    return rng.choice(len(faces), n, p=area / area.sum()), rng.dirichlet(np.ones(3), n)


def shading_normals(faces: np.ndarray, normals: np.ndarray, tangents: np.ndarray, uv: np.ndarray,
                    image: np.ndarray, face_ids: np.ndarray, bary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit shading normals at surface points (face, barycentrics) without and with the normal map:
    the interpolated vertex normal, and the map's nearest texel taken through the interpolated
    tangent frame, as a glTF renderer does (uv in glTF's convention, image row 0 at v = 0)."""
    corners = faces[face_ids]
    n = _unit(np.einsum("nk,nkd->nd", bary, normals[corners]))
    t = _orthogonal_unit(np.einsum("nk,nkd->nd", bary, tangents[corners, :3]), n)
    b = np.cross(n, t) * tangents[corners[:, 0], 3:4]
    texel = np.einsum("nk,nkd->nd", bary, uv[corners])
    height, width = image.shape[:2]
    local = decode(image[np.clip((texel[:, 1] * height).astype(int), 0, height - 1),
                         np.clip((texel[:, 0] * width).astype(int), 0, width - 1)])
    return n, _unit(local[:, :1] * t + local[:, 1:2] * b + local[:, 2:] * n)
