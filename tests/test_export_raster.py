"""The export's raster helpers on inputs whose answer is known: inside/outside of a closed mesh on a
grid, texture dilation out of UV charts, and triangle rasterization with barycentrics."""
from __future__ import annotations

import numpy as np
import trimesh

from backend.export import mesh_occupancy
from backend.export.raster import rasterize_triangles
from backend.export.uv_bake import dilate


def test_mesh_occupancy_of_a_known_mesh():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    axis = (np.arange(40) + 0.5) / 20 - 1.0
    inside = mesh_occupancy(sphere.vertices, sphere.faces, axis)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    truth = np.linalg.norm(grid, axis=-1) < 0.5
    assert (inside != truth).sum() <= 0.02 * truth.sum()


def test_dilation_fills_every_texel_from_the_nearest_chart():
    """Two one-texel 'charts' of different colors: the ring next to each copies it exactly, and
    every other texel gets a mix of the two (never black)."""
    image = np.zeros((37, 20, 3), np.float32)
    filled = np.zeros((37, 20), bool)
    image[3, 3], image[30, 15] = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    filled[3, 3] = filled[30, 15] = True
    out = dilate(image, filled)
    np.testing.assert_allclose(out[2:5, 2:5].reshape(-1, 3), [[1.0, 0.0, 0.0]] * 9)
    np.testing.assert_allclose(out[29:32, 14:17].reshape(-1, 3), [[0.0, 0.0, 1.0]] * 9)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-6)
    assert out[0, 0, 0] > 0.99 and out[36, 19, 2] > 0.99     # corners: their own chart's color


def test_rasterize_triangles_covers_each_pixel_of_a_square_once():
    """Two triangles tiling a 10 x 6 rectangle: every pixel centre inside is found, by one triangle
    or (on the diagonal) both, and barycentrics rebuild the centre."""
    tri = np.array([[[2, 1], [12, 1], [12, 7]], [[2, 1], [12, 7], [2, 7]]], float)
    x, y, ids, bary = rasterize_triangles(tri, 16, 16)
    assert set(zip(x.tolist(), y.tolist())) == {(i, j) for i in range(2, 12) for j in range(1, 7)}
    centres = np.einsum("nk,nkd->nd", bary, tri[ids])
    np.testing.assert_allclose(centres, np.column_stack([x, y]) + 0.5, atol=1e-9)
