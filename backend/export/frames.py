"""The one coordinate conversion of meshes leaving the backend: its world -> glTF's frame.

Backend world: +Z up, the object's front toward +X. glTF 2.0: +Y up, the asset's front toward +Z.
Backend (x, y, z) -> glTF (X, Y, Z) = (y, z, x): a rotation (a cyclic permutation, det +1), so
winding and normals stay valid. Every mesh that leaves the backend (mesh.glb, mesh.obj, the live
coarse mesh) goes through `to_gltf`; the Blender add-on then applies the glTF importer's own
glTF -> Blender conversion. docs/frames.md has the three frames side by side.
"""
from __future__ import annotations

import numpy as np

TO_GLTF = [1, 2, 0]    # glTF axis i takes backend axis TO_GLTF[i]
FROM_GLTF = [2, 0, 1]  # the inverse permutation


def to_gltf(points: np.ndarray) -> np.ndarray:
    """Backend points or directions [N, 3] -> glTF's frame: (x, y, z) -> (y, z, x)."""
    return np.asarray(points)[:, TO_GLTF]


def from_gltf(points: np.ndarray) -> np.ndarray:
    """glTF points or directions [N, 3] -> the backend's frame: (X, Y, Z) -> (Z, X, Y)."""
    return np.asarray(points)[:, FROM_GLTF]
