"""Mending what decimation breaks: a closed 2-manifold mesh from one that is almost one.

Marching cubes on the padded grid gives a closed surface. Quadric decimation (fast_simplification)
does not check that an edge collapse keeps the surface a manifold, so where it squeezes a part
thinner than a few grid cells it leaves back-to-back face pairs (two faces on the same three
vertices with opposite winding: they enclose nothing, and a vertex that only they touch gets a zero
normal, an error in glTF), edges shared by 4 faces, and vertices where two sheets touch at a point.
`make_manifold` removes those and closes the holes it opens; docs/export.md has the measurements.
"""
from __future__ import annotations

import numpy as np
import trimesh


def make_manifold(vertices: np.ndarray, faces: np.ndarray, rounds: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, faces) where every edge has exactly two faces, wound oppositely, and the faces
    around every vertex form one fan. Coincident faces go (a back-to-back pair entirely; same-wound
    copies down to one); faces on a non-manifold edge or around a non-manifold vertex go; each hole left is closed
    with a fan around a new vertex at the hole's centroid. Repeats until nothing is left to mend (a
    closed manifold passes through unchanged). Every boundary is closed, so an open input comes out
    closed. New vertices are appended; unreferenced ones are kept (callers drop them)."""
    vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces, np.int64).reshape(-1, 3)
    for round_ in range(rounds):
        faces = same_position(vertices)[faces]
        faces = drop_coincident(faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2])
                                      & (faces[:, 2] != faces[:, 0])])
        bad = non_manifold_faces(faces, len(vertices))
        if not bad.any() and not boundary_edges(faces).size:
            return vertices, faces
        # A knot that comes back after being cut out and closed is cut out with a wider margin
        # (one more ring of faces per round from the third on).
        for _ in range(max(0, round_ - 1)):
            touched = np.zeros(len(vertices), bool)
            touched[faces[bad]] = True
            bad = touched[faces].any(axis=1)
        faces = faces[~bad]
        vertices, faces = close_holes(vertices, faces)
    raise NotManifold(f"the mesh is still not a closed manifold after {rounds} rounds of mending")


def same_position(vertices: np.ndarray) -> np.ndarray:
    """[V] index of the first vertex at each vertex's float32 position: the files store float32, so
    vertices equal there are one vertex to any reader. Two holes closed at the same place (a thin
    part cut through, both sides closed by a fan around the same centroid) are then back-to-back
    faces on the same vertices, which drop_coincident removes."""
    key = np.ascontiguousarray(np.asarray(vertices, np.float32)).view(np.dtype((np.void, 12))).ravel()
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first[inverse.ravel()]


class NotManifold(RuntimeError):
    """make_manifold gave up: the caller keeps the mesh without its coincident faces."""


def drop_coincident(faces: np.ndarray) -> np.ndarray:
    """Faces on the same three vertices: +1 for each wound one way, -1 the other way; keep one face
    with the sign of the sum, or none when it is 0 (back-to-back pairs cancel)."""
    if len(faces) == 0:
        return faces
    first = np.argmin(faces, axis=1)
    rotated = np.take_along_axis(faces, (first[:, None] + np.arange(3)) % 3, axis=1)  # smallest index first
    sign = np.where(rotated[:, 1] < rotated[:, 2], 1, -1)
    group, count = _groups(np.sort(faces, axis=1))
    if count.max() == 1:
        return faces
    net = np.bincount(group, weights=sign)
    candidates = np.nonzero(sign == np.sign(net[group]))[0]
    _, keep = np.unique(group[candidates], return_index=True)
    return faces[np.sort(candidates[keep])]


def _groups(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equal rows of a non-negative int array [N, K] grouped: (group of each row [N], rows per group
    [G]). Rows become one int64 key when they fit (faster than np.unique(axis=0): docs/quality.md)."""
    base = int(rows.max()) + 1 if rows.size else 1
    if base ** rows.shape[1] < 2 ** 62:
        key = np.zeros(len(rows), np.int64)
        for column in rows.T:
            key = key * base + column
        _, group, count = np.unique(key, return_inverse=True, return_counts=True)
        return group.reshape(-1), count
    _, group, count = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    return group.reshape(-1), count


def _half_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-edge i runs from corner i (vertex faces.flat[i]) to the next corner of its face."""
    return faces.reshape(-1), faces[:, [1, 2, 0]].reshape(-1)


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """Indices of half-edges with no twin (an edge used by one face only)."""
    start, end = _half_edges(faces)
    edge, count = _groups(np.sort(np.column_stack([start, end]), axis=1))
    return np.nonzero(count[edge] == 1)[0]


def non_manifold_faces(faces: np.ndarray, vertex_count: int) -> np.ndarray:
    """bool [F]: faces on an edge that is neither one face each way nor a single face (a boundary),
    and, away from such edges, faces around a vertex whose faces form more than one fan (two sheets
    meeting at a point)."""
    if len(faces) == 0:
        return np.zeros(0, bool)
    start, end = _half_edges(faces)
    edge, edge_count = _groups(np.sort(np.column_stack([start, end]), axis=1))
    directed, directed_count = _groups(np.column_stack([start, end]))
    broken = (edge_count[edge] > 2) | (directed_count[directed] > 1)
    key, twin_key = start * vertex_count + end, end * vertex_count + start
    # Fans: join the corners at either end of each good edge's two half-edges (the corner a half-edge
    # starts at, and the corner after its twin's start: the same vertex); a vertex whose corners
    # fall into more than one group is where sheets touch.
    order = np.argsort(key)
    twin = order[np.minimum(np.searchsorted(key[order], twin_key), len(key) - 1)]
    corner = np.nonzero((key[twin] == twin_key) & ~broken)[0]
    after_twin = twin[corner] - twin[corner] % 3 + (twin[corner] % 3 + 1) % 3
    labels = trimesh.graph.connected_component_labels(np.column_stack([corner, after_twin]),
                                                      node_count=len(start))
    corner_group, _ = _groups(np.column_stack([start, labels]))
    fan_vertex = np.zeros(corner_group.max() + 1, np.int64)
    fan_vertex[corner_group] = start
    fans = np.bincount(fan_vertex, minlength=vertex_count)
    near_broken = np.zeros(vertex_count, bool)
    near_broken[start[broken]] = near_broken[end[broken]] = True
    pinched = (fans > 1) & ~near_broken   # a broken edge's ends are mended with it first
    return broken.reshape(-1, 3).any(axis=1) | pinched[faces].any(axis=1)


def close_holes(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Close each boundary loop with a fan of faces around a new vertex at the loop's centroid,
    wound like the faces around it."""
    edges = boundary_edges(faces)
    if len(edges) == 0:
        return vertices, faces
    start, end = _half_edges(faces)
    a, b = start[edges], end[edges]
    loop = boundary_loops(a, b)
    centroids = np.stack([np.bincount(loop, weights=vertices[a, d]) for d in range(3)], axis=1)
    centroids /= np.bincount(loop)[:, None]
    fill = np.column_stack([b, a, len(vertices) + loop])   # the hole's side of edge a -> b runs b -> a
    return np.vstack([vertices, centroids]), np.vstack([faces, fill])


def boundary_loops(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which loop each boundary edge a[i] -> b[i] is on (int [E]). Each loop is walked until it comes
    back to its first vertex, so where two holes touch at a vertex they stay two loops. Every vertex
    has as many boundary edges out as in (the rest of the mesh is closed), so a walk never gets stuck."""
    leaving: dict[int, list[int]] = {}
    for i in np.argsort(a, kind="stable")[::-1]:
        leaving.setdefault(int(a[i]), []).append(int(i))
    loop = np.full(len(a), -1, np.int64)
    loops = 0
    for first in range(len(a)):
        if loop[first] >= 0:
            continue
        edge = first
        while True:
            loop[edge] = loops
            if b[edge] == a[first]:
                break
            candidates = leaving[int(b[edge])]
            while loop[candidates[-1]] >= 0:
                candidates.pop()
            edge = candidates.pop()
        loops += 1
    return loop


def unit_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """Per-vertex unit normals [V, 3]. Where the faces around a vertex cancel or have no area (the
    sum is zero), the direction from the mesh's centre is used, so no normal is ever zero."""
    normals = np.array(mesh.vertex_normals, dtype=np.float64)
    length = np.linalg.norm(normals, axis=1)
    weak = ~np.isfinite(length) | (length < 0.5)
    if weak.any():
        outward = np.asarray(mesh.vertices)[weak] - np.asarray(mesh.vertices).mean(axis=0)
        outward[np.linalg.norm(outward, axis=1) < 1e-12] = (0.0, 0.0, 1.0)
        normals[weak] = outward
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)
