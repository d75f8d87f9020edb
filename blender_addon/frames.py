"""glTF's frame to Blender's, in one place.

Every mesh leaving the backend is in glTF's frame: +Y up, the asset's front toward +Z (docs/frames.md).
Blender's glTF importer turns a glTF point (x, y, z) into Blender's (x, -z, y) (+Z up, front toward
-Y): glTF-Blender-IO's `loc_gltf_to_blender`. The live coarse mesh, which the add-on builds itself,
goes through the very same map here, so the proxy and the imported mesh.glb overlap.
"""
from __future__ import annotations

import numpy as np


def gltf_to_blender(points: np.ndarray) -> np.ndarray:
    """[N, 3] glTF points -> Blender points: (x, y, z) -> (x, -z, y). A rotation (det +1), so face
    winding, and with it which side faces out, is kept."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    return np.stack([points[:, 0], -points[:, 2], points[:, 1]], axis=1)


def blender_to_gltf(points: np.ndarray) -> np.ndarray:
    """[N, 3] Blender points -> glTF points: (x, y, z) -> (x, z, -y), the inverse of `gltf_to_blender`
    (what Blender's glTF exporter does with +Y up). The selection goes to the backend this way."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    return np.stack([points[:, 0], points[:, 2], -points[:, 1]], axis=1)
