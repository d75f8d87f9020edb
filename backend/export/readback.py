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


def glb_arrays(path: Path) -> dict[str, np.ndarray]:
    """The one primitive of a GLB written by files.py, straight from the file (no importer in
    between): its vertex attributes by glTF name (float64, glTF's frame) and "indices" as faces [F, 3]."""
    import json
    import struct

    data = Path(path).read_bytes()
    json_length = struct.unpack_from("<I", data, 12)[0]
    document, binary = json.loads(data[20:20 + json_length]), data[28 + json_length:]
    primitive = document["meshes"][0]["primitives"][0]
    out = {}
    for name, index in [*primitive["attributes"].items(), ("indices", primitive["indices"])]:
        accessor = document["accessors"][index]
        view = document["bufferViews"][accessor["bufferView"]]
        width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[accessor["type"]]
        kind = {5126: "<f4", 5125: "<u4", 5123: "<u2", 5121: "u1"}[accessor["componentType"]]
        values = np.frombuffer(binary, kind, accessor["count"] * width,
                               view.get("byteOffset", 0) + accessor.get("byteOffset", 0))
        out[name] = values.reshape(-1, 3).astype(np.int64) if name == "indices" else \
            values.reshape(-1, width).astype(np.float64)
    return out
