"""An exported asset read back, in the backend frame, for measuring it (tests, benchmarks, metrics)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from .frames import from_gltf


def load_asset(path: Path) -> trimesh.Trimesh:
    """mesh.glb or mesh.obj as trimesh loads it, moved back from glTF's frame to the backend's
    (frames.from_gltf). UVs, material and texture stay as loaded (trimesh's UVs have v up)."""
    loaded = trimesh.load(path, process=False)
    mesh = loaded if isinstance(loaded, trimesh.Trimesh) else next(iter(loaded.geometry.values()))
    mesh.vertices = from_gltf(mesh.vertices)
    return mesh


def texture_color(mesh: trimesh.Trimesh, face_ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of the nearest texel at surface points given as (face, barycentrics [N, 3])."""
    image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB")) / 255.0
    uv = np.einsum("nk,nkd->nd", bary, mesh.visual.uv[mesh.faces[face_ids]])
    h, w = image.shape[:2]
    col = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    row = np.clip(((1.0 - uv[:, 1]) * h).astype(int), 0, h - 1)
    return image[row, col]
