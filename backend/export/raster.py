"""Scan conversion of triangles onto a regular 2D pixel grid, vectorized in numpy.

Two users: the texture bake (triangles in UV space -> texels) and mesh_occupancy (triangles
projected along x -> which grid columns they cross, for volume IoU against a known shape).
"""
from __future__ import annotations

import numpy as np

MAX_CANDIDATES = 1 << 20  # bounding-box pixels tested per batch: bounds memory
RAY_OFFSET = np.array([1.234567e-5, 2.345678e-5])  # cells: mesh_occupancy's rays, just off the grid nodes


def rasterize_triangles(tri: np.ndarray, width: int, height: int, eps: float = 1e-9):
    """Pixels whose centres (x + 0.5, y + 0.5) lie inside 2D triangles tri [T, 3, 2] (pixel units,
    x across, y down). Returns (x, y, triangle index, barycentrics [N, 3]); a centre on an edge
    shared by two triangles is reported for both."""
    tri = np.asarray(tri, np.float64)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    lo = np.ceil(tri.min(1) - 0.5).astype(np.int64)
    hi = np.floor(tri.max(1) - 0.5).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    size = np.maximum(hi - lo + 1, 0)
    count = size[:, 0] * size[:, 1]
    count[np.abs(area) < 1e-12] = 0                       # degenerate: covers nothing
    parts = ([], [], [], [])
    start = 0
    ends = np.cumsum(count)
    while start < len(tri):
        # a batch of triangles whose bounding boxes hold at most MAX_CANDIDATES pixels (at least one)
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + MAX_CANDIDATES, side="right")))
        ids = np.repeat(np.arange(start, stop), count[start:stop])
        local = np.arange(len(ids)) - np.repeat(ends[start:stop] - count[start:stop] - base, count[start:stop])
        px = lo[ids, 0] + local % size[ids, 0]
        py = lo[ids, 1] + local // np.maximum(size[ids, 0], 1)
        # barycentrics of the pixel centre from signed sub-triangle areas
        qx, qy = px + 0.5 - a[ids, 0], py + 0.5 - a[ids, 1]
        ux, uy = b[ids].T - a[ids].T
        vx, vy = c[ids].T - a[ids].T
        wb = (qx * vy - qy * vx) / area[ids]
        wc = (ux * qy - uy * qx) / area[ids]
        bary = np.stack([1.0 - wb - wc, wb, wc], axis=-1)
        inside = (bary >= -eps).all(-1)
        for part, value in zip(parts, (px, py, ids, bary)):
            part.append(value[inside])
        start = stop
    if not parts[0]:
        return (np.zeros(0, np.int64),) * 3 + (np.zeros((0, 3)),)
    return tuple(np.concatenate(p) for p in parts)


def mesh_occupancy(vertices: np.ndarray, faces: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Which points of the grid axis^3 (indexed [x, y, z]; axis uniformly spaced) a closed mesh
    encloses, by ray parity: a ray along +x from a point crosses the surface an odd number of times
    iff the point is inside."""
    axis = np.asarray(axis, np.float64)
    n, step = len(axis), axis[1] - axis[0]
    tri = np.asarray(vertices, np.float64)[faces]
    # columns (y_j, z_k) are pixel centres once (y, z) is shifted so axis[j] sits at j + 0.5. A ray
    # through a mesh edge exactly would be reported for both triangles of that edge (or for none),
    # counting its crossing twice and flipping the parity of the rest of its row: symmetric meshes
    # (a box's face diagonals, marching-cubes meshes of symmetric fields) put edges right on the rays.
    # So each ray passes a tiny, irrational-looking fraction of a cell off its node, where no edge lies.
    tri2d = (tri[:, :, 1:] - axis[0]) / step + 0.5 - RAY_OFFSET
    j, k, ids, bary = rasterize_triangles(tri2d, n, n)
    x_cross = np.einsum("ij,ij->i", bary, tri[ids, :, 0])
    first_after = np.searchsorted(axis, x_cross, side="right")   # grid points beyond this crossing
    keep = first_after < n
    crossings = np.zeros((n, n, n), np.int32)
    np.add.at(crossings, (first_after[keep], j[keep], k[keep]), 1)
    return (np.cumsum(crossings, axis=0) % 2).astype(bool)
