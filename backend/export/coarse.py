"""A quick vertex-colored proxy of the field for the live view during training (no UVs), in glTF's
frame like the final mesh, so the add-on places both the same way (docs/frames.md)."""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .cleanup import as_mesh, decimate
from .extract import DEFAULT_CHUNK, marching_cubes
from .frames import to_gltf
from .grid import density_grid, fill_cavities
from .level import surface_level
from .uv_bake import vertex_colors

LIVE_RAYS = 8   # per view side for the live mesh's level (the export's: level.LEVEL_RAYS)


def coarse_mesh(field, resolution: int = 64, threshold: float | None = None, bound: float = 1.0,
                chunk: int = DEFAULT_CHUNK, face_budget: int = 10_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices float32 [V, 3] in glTF's frame (+Y up, front +Z), faces int32 [F, 3], colors uint8 [V, 3]).
    A field with no surface yet (early in training) gives empty arrays rather than an error.
    Decimated to face_budget: a noisy early field gives many faces, and each live update in Blender
    costs time per face (docs/quality.md, "Figures behind design choices").
    threshold None: the export's rule (level.surface_level) on fewer rays, so it stays cheap."""
    empty = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8)
    try:
        threshold = surface_level(field, bound, chunk, rays=LIVE_RAYS).level if threshold is None else float(threshold)
    except UserError:   # no view is opaque yet
        return empty
    grid, _ = fill_cavities(density_grid(field, resolution, threshold, bound, chunk)[0], threshold)
    try:
        vertices, faces = marching_cubes(grid, threshold, bound)
        mesh = decimate(as_mesh(vertices, faces), face_budget)
    except UserError:
        return empty
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    return to_gltf(vertices).astype(np.float32), faces.astype(np.int32), vertex_colors(field, vertices, chunk)
