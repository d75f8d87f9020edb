"""The trained texture field baked into the artist's mesh: texture.png, mesh.glb (+ mesh.obj/.mtl) and
corner_uv.bin (docs/selection.md, "Texture mode").

UVs: the mesh's own layer when it has one, used as given and written back unchanged (corner_uv.bin holds
its exact bytes, and mesh.glb its exact float32 values); otherwise an xatlas layout
(backend/export/uv_bake.py `unwrap`) that goes back with the texture. Texels: each UV triangle is scan
converted (backend/export/raster.py); a texel centre's barycentrics give the point on the fitted mesh whose
albedo it stores; the empty texels are filled by uv_bake's dilation, so filtering never pulls in black.
Where islands overlap (mirrored or stacked UVs) a texel takes the first triangle's colour.

Geometry: mesh.glb and mesh.obj carry the input's own vertices in its own (glTF) frame and scale; the
fit only placed the mesh in the field, and is never applied to what is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from pathlib import Path

import numpy as np
import torch
import trimesh

from shared.results import CORNER_UV

from ..errors import UserError
from ..export.extract import DEFAULT_CHUNK, field_device, query
from ..export.files import Asset, write_asset
from ..export.frames import to_gltf
from ..export.raster import rasterize_triangles
from ..export.uv_bake import texel_image, unwrap
from ..fileio import write_atomic
from .mesh_input import SourceMesh


@dataclass
class BakeResult:
    paths: dict[str, Path]
    corner_uv: np.ndarray   # [F*3, 2] float32, glTF's convention (v down), in the input's triangle order
    texture: np.ndarray     # [S, S, 3] uint8, row 0 at v = 0
    stats: dict = dataclass_field(default_factory=dict)


def xatlas_corner_uv(mesh: SourceMesh, texture_size: int) -> np.ndarray:
    """A new UV layout for a mesh without one, per corner of its triangles in their order."""
    normals = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).vertex_normals
    atlas = unwrap(mesh.vertices, mesh.faces, np.asarray(normals), texture_size)
    if atlas is None or not np.array_equal(atlas.vertex_map[atlas.faces], mesh.faces):
        raise UserError("xatlas could not lay out UVs for this mesh: give the mesh a UV layer "
                        "(e.g. Blender's Smart UV Project) and texture it again")
    return atlas.uv[atlas.faces].reshape(-1, 2).astype(np.float32)


def tile_offset(corner_uv: np.ndarray) -> np.ndarray:
    """[F, 1, 2] integer shift that moves each UV triangle's centroid into the [0, 1] tile: glTF samples
    with repeat by default, so a triangle laid out in another tile reads the same texels."""
    return np.floor(corner_uv.reshape(-1, 3, 2).astype(np.float64).mean(axis=1, keepdims=True))


def bake_texels(albedo_fn, fitted: SourceMesh, corner_uv: np.ndarray, size: int,
                chunk: int = DEFAULT_CHUNK, device: torch.device | None = None) -> tuple[np.ndarray, float]:
    """The field's albedo at each texel a UV triangle covers: uint8 [size, size, 3] and the fraction of
    texels covered before dilation. albedo_fn takes points [N, 3] of the fitted mesh."""
    uv = corner_uv.reshape(-1, 3, 2).astype(np.float64)
    x, y, ids, bary = rasterize_triangles((uv - tile_offset(corner_uv)) * size, size, size)
    texel, first = np.unique(y * size + x, return_index=True)   # shared edges and overlapping islands: once
    corners = fitted.vertices[fitted.faces[ids[first]]]
    points = np.einsum("nk,nkd->nd", bary[first], corners)
    colors = query(albedo_fn, points, device or torch.device("cpu"), chunk)
    return texel_image(texel, colors, size)


def welded(source: SourceMesh, corner_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """glTF keeps one UV per vertex: the input's vertices split where corners of one vertex differ in UV.
    Returns (vertex index into the input [V'], faces [F, 3] into V', uv [V', 2] float32)."""
    keys = np.empty(len(corner_uv), dtype=[("v", np.int64), ("u", np.uint32), ("w", np.uint32)])
    bits = np.ascontiguousarray(corner_uv, np.float32).view(np.uint32)   # exact: compare UVs bit for bit
    keys["v"], keys["u"], keys["w"] = source.faces.reshape(-1), bits[:, 0], bits[:, 1]
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return unique["v"], inverse.reshape(-1, 3), corner_uv[first]


def bake_texture(model, source: SourceMesh, fitted: SourceMesh, out_dir: Path, texture_size: int = 1024,
                 chunk: int = DEFAULT_CHUNK) -> BakeResult:
    """Bake model.albedo (points of `fitted`, the field's placement of `source`) into source's UVs or an
    xatlas layout; write texture.png, mesh.glb, mesh.obj, mesh.mtl and corner_uv.bin into out_dir."""
    if texture_size < 16:
        raise UserError(f"texture size {texture_size} is too small; use at least 16 (e.g. 1024)")
    own_uv = source.corner_uv is not None
    corner_uv = source.corner_uv if own_uv else xatlas_corner_uv(fitted, texture_size)
    texture, fill = bake_texels(model.albedo, fitted, corner_uv, int(texture_size), chunk, field_device(model))
    vertex, faces, uv = welded(source, corner_uv)
    normals = np.asarray(trimesh.Trimesh(source.vertices, source.faces, process=False).vertex_normals)
    # uv as float64: files.py writes v up as 1 - v and trimesh's glTF writer flips it back, both exact in
    # float64, so mesh.glb holds the input's float32 UVs unchanged
    asset = Asset(to_gltf(source.vertices[vertex]), faces, to_gltf(normals[vertex]), uv=uv.astype(np.float64),
                  texture=texture)
    paths = write_asset(asset, out_dir)
    paths[CORNER_UV] = write_atomic(Path(out_dir) / CORNER_UV, corner_uv.astype("<f4").tobytes())
    stats = dict(uv_source="mesh" if own_uv else "xatlas", texture_size=int(texture_size),
                 texture_fill=round(fill, 4), faces=int(len(source.faces)), vertices_written=int(len(vertex)))
    return BakeResult(paths, corner_uv, texture, stats)


def read_corner_uv(path: Path) -> np.ndarray:
    """corner_uv.bin -> [F*3, 2] float32 (what the Blender add-on reads)."""
    return np.frombuffer(Path(path).read_bytes(), dtype="<f4").reshape(-1, 2)
