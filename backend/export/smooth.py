"""Feature-preserving mesh smoothing: bilateral normal filtering (Zheng, Fu, Au, Tai 2011, "Bilateral
Normal Filtering for Mesh Denoising", IEEE TVCG 17(10)) followed by the vertex update of Sun et al. 2007
("Fast and effective feature-preserving mesh denoising", IEEE TVCG 13(5)).

Why (docs/quality.md, "Surface", and docs/export.md, "Flat faces, sharp edges"): a trained field's
isosurface is bumpy at the scale of a few grid cells. Taubin/Laplacian smoothing (cleanup.smooth) moves
every vertex towards its neighbours whatever lies between them, so it rounds a cube's edges as much as
it flattens its faces. Filtering the face normals with a range weight on the normal difference averages
within a face and not across an edge; the vertices are then moved so the faces take those normals.

Only vertex positions change: the faces, and with them watertightness and manifoldness, stay as they are.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

# Defaults chosen by measurement on the draft demo cube and on noisy exact shapes (docs/quality.md,
# "Flat faces, sharp edges"): sigma_r 0.25 keeps a 90-degree edge (|n_i - n_j| = 1.41 there, so its
# weight is exp(-16) of a flat neighbour's); sigma_s is the mean distance between the centroids of
# faces that share an edge (Zheng et al. 2011, section 4).
NORMAL_ITERATIONS = 40
VERTEX_ITERATIONS = 100
SIGMA_R = 0.25
MIN_AREA = 0.1
GUIDE_SPREAD = 0.05   # 1 - |resultant| / area: about what normals spread 18 degrees either way give


def _face_geometry(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face centroids [F, 3], unit normals [F, 3] (zero for degenerate faces) and areas [F]."""
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return tri.mean(axis=1), _unit(cross), 0.5 * np.linalg.norm(cross, axis=1)


def neighbourhoods(faces: np.ndarray, n_vertices: int) -> sparse.csr_matrix:
    """[F, F] 0/1 matrix, row i marking face i and every face that shares a vertex with it: the
    neighbourhood N(i) of Zheng et al. 2011 (their vertex-based one, which lets a normal see across a
    sliver triangle) with i itself. Rows are sorted, so row segments can be reduced in place."""
    n = len(faces)
    incidence = sparse.csr_matrix((np.ones(3 * n, np.int32), (np.repeat(np.arange(n), 3), faces.reshape(-1))),
                                  shape=(n, n_vertices))
    shared = (incidence @ incidence.T).tocsr()
    shared.sort_indices()
    shared.data[:] = 1
    return shared


def edge_spacing(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Mean distance between the centroids of faces that share an edge: Zheng et al.'s sigma_s."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    owner = np.repeat(np.arange(len(faces)), 3)
    key = edges[:, 0] * (int(edges.max()) + 1) + edges[:, 1]
    order = np.argsort(key, kind="stable")
    same = key[order][1:] == key[order][:-1]
    a, b = owner[order][:-1][same], owner[order][1:][same]
    centroids = vertices[faces].mean(axis=1)
    return float(np.linalg.norm(centroids[a] - centroids[b], axis=1).mean()) if len(a) else 1.0


def _unit(x: np.ndarray) -> np.ndarray:
    length = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, length, out=np.zeros_like(x), where=length > 0)


def guidance_normals(normals: np.ndarray, areas: np.ndarray, near: sparse.csr_matrix) -> np.ndarray:
    """Guided mesh normal filtering's guidance (Zhang, Deng, Zhang, Bouaziz, Liu 2015, "Guided Mesh
    Normal Filtering", CGF 34(7), section 4): among the patches P_j = N(j) that contain face i, take
    the most consistent one and use its area-weighted mean normal. Consistency here is how far the
    area-weighted resultant falls short of unit length, 1 - |sum_k A_k n_k| / sum_k A_k (0 for a flat
    patch), which needs only sums over patches; the paper's measure is the largest pairwise normal
    difference times an edge-saliency factor, which measured no better on the draft cube and cost more
    (docs/quality.md, "Flat faces, sharp edges"). A face on a rounded edge thus takes the normal of
    the flat side it lies closest to, so the filter sharpens edges that the field has rounded."""
    rows = np.repeat(np.arange(near.shape[0]), np.diff(near.indptr))
    cols = near.indices
    summed = near @ (areas[:, None] * normals)
    means = _unit(summed)
    spread = 1.0 - np.linalg.norm(summed, axis=1) / np.maximum(near @ areas, 1e-30)
    # N(i) is symmetric: the patches containing i are those of its own neighbourhood
    candidate = spread[cols]
    best = np.minimum.reduceat(candidate, near.indptr[:-1])
    hit = np.flatnonzero(candidate == best[rows])
    first = hit[np.unique(rows[hit], return_index=True)[1]]
    # where even the best patch bends (every patch spans an edge: a coarse mesh, a 12-triangle box)
    # its mean is a diagonal that belongs to no face; the face's own normal guides instead
    return np.where((best > GUIDE_SPREAD)[:, None], normals, means[cols[first]])


def filter_normals(vertices: np.ndarray, faces: np.ndarray, iterations: int = NORMAL_ITERATIONS,
                   sigma_r: float = SIGMA_R, sigma_s: float | None = None, guided: bool = False) -> np.ndarray:
    """Bilateral filtering of the face normals, Zheng et al. 2011 eq. (4)-(5):
        n_i <- normalize( sum_{j in N(i)} A_j W_s(|c_i - c_j|) W_r(|g_i - g_j|) n_j )
    with Gaussians W_s(x) = exp(-x^2 / 2 sigma_s^2), W_r(x) = exp(-x^2 / 2 sigma_r^2), iterated on the
    normals only (the centroids c and areas A stay those of the input mesh); N(i) holds i itself.
    g = n (Zheng et al.), or with guided=True the patch guidance of Zhang et al. 2015 (guidance_normals),
    recomputed from the current normals at every iteration. Returns unit normals [F, 3]."""
    vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    centroids, normals, areas = _face_geometry(vertices, faces)
    near = neighbourhoods(faces, len(vertices))
    i, j = np.repeat(np.arange(len(faces)), np.diff(near.indptr)), near.indices
    sigma_s = edge_spacing(vertices, faces) if sigma_s is None else sigma_s
    spatial = areas[j] * np.exp(-np.sum((centroids[i] - centroids[j]) ** 2, axis=1) / (2.0 * sigma_s ** 2))
    weights = near.astype(np.float64)
    for _ in range(iterations):
        guide = guidance_normals(normals, areas, near) if guided else normals
        # |g_i - g_j|^2 = 2 - 2 g_i . g_j for unit vectors
        weights.data = spatial * np.exp((np.einsum("ij,ij->i", guide[i], guide[j]) - 1.0) / sigma_r ** 2)
        normals = _unit(weights @ normals)
    return normals


def fit_vertices(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray,
                 iterations: int = VERTEX_ITERATIONS) -> np.ndarray:
    """Move the vertices so each face becomes orthogonal to its filtered normal, Sun et al. 2007 eq. (7)
    (Zheng et al. 2011 eq. (8)): x_i <- x_i + 1/|F_i| sum_{j in F_i} n_j (n_j . (c_j - x_i)), where F_i
    are the faces around vertex i and c_j their current centroids. Each step is a gradient step on
    sum_j sum_{edges (k, l) of j} (n_j . (x_k - x_l))^2; it moves vertices along the normals only.
    Where a step would turn a face over or nearly collapse it (its area projected on the input face's
    normal under MIN_AREA of the input area: the update allows both at corners and on parts a few
    cells thin), the vertices of that face keep their place for that step."""
    vertices, faces = np.array(vertices, np.float64), np.asarray(faces, np.int64)
    corner_vertex = faces.reshape(-1)
    corner_face = np.repeat(np.arange(len(faces)), 3)
    valence = np.maximum(np.bincount(corner_vertex, minlength=len(vertices)), 1).astype(np.float64)
    n = normals[corner_face]
    tri = vertices[faces]
    reference = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])   # twice the area along the normal
    for _ in range(iterations):
        centroids = vertices[faces].mean(axis=1)
        along = np.einsum("ij,ij->i", n, centroids[corner_face] - vertices[corner_vertex])
        step = np.column_stack([np.bincount(corner_vertex, weights=along * n[:, axis], minlength=len(vertices))
                                for axis in range(3)])
        vertices = _unflipped(vertices, vertices + step / valence[:, None], faces, reference)
    return vertices


def _unflipped(before: np.ndarray, after: np.ndarray, faces: np.ndarray, reference: np.ndarray,
               rounds: int = 8) -> np.ndarray:
    """`after`, with the vertices of every face it would turn over or collapse (see fit_vertices;
    `reference`: the input faces' cross products) put back to `before`, repeated while that does it
    to a neighbour; `before` if it still does."""
    for _ in range(rounds):
        tri = after[faces]
        cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        flipped = np.einsum("ij,ij->i", cross, reference) < MIN_AREA * np.einsum("ij,ij->i", reference, reference)
        if not flipped.any():
            return after
        held = np.unique(faces[flipped])
        after[held] = before[held]
    return before


def bilateral_smooth(vertices: np.ndarray, faces: np.ndarray, normal_iterations: int = NORMAL_ITERATIONS,
                     vertex_iterations: int = VERTEX_ITERATIONS, sigma_r: float = SIGMA_R,
                     sigma_s: float | None = None, guided: bool = True) -> np.ndarray:
    """Feature-preserving smoothing of a triangle mesh (counter-clockwise faces): filtered face
    normals (filter_normals; guided by default, which measured best on trained fields), then the
    vertices fitted to them (fit_vertices). Returns new vertex positions [V, 3]; the faces are
    unchanged."""
    vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    if len(faces) == 0:
        return vertices.copy()
    normals = filter_normals(vertices, faces, normal_iterations, sigma_r, sigma_s, guided)
    return fit_vertices(vertices, faces, normals, vertex_iterations)
