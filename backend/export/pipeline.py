"""export_mesh: a trained field -> a textured, decimated, Blender-ready mesh on disk.

density grid, queried near the surface only (grid) -> marching cubes (extract) -> drop floaters,
smooth, flatten the faces with sharp edges kept (smooth), decimate, mend to a closed manifold
(cleanup, manifold) -> xatlas UVs and a CPU albedo bake (uv_bake) -> GLB + OBJ/MTL/PNG in
glTF's frame (frames, files).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path

import numpy as np

from shared.schema import RUN_FIELDS, SettingError, check_value

from ..errors import UserError
from . import cleanup
from .extract import DEFAULT_CHUNK, marching_cubes
from .files import Asset, write_asset
from .frames import to_gltf
from .grid import density_grid, fill_cavities
from .level import fixed_level, surface_level
from .manifold import unit_normals
from .normal_map import bake_normal_map, tangent_frames
from .smooth import bilateral_smooth
from .uv_bake import bake_albedo, unwrap, vertex_colors

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    paths: dict[str, Path]   # "mesh.glb", "mesh.obj", and with a texture "mesh.mtl", "texture.png"
    stats: dict = dataclass_field(default_factory=dict)  # faces, vertices, seconds per stage, texture_fill...


class _Stopwatch:
    """Seconds spent per stage, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 4)
        self._last = now


def _run_default(name: str):
    """A run setting's default (shared/schema.py RUN_FIELDS), so a direct call exports as a run does.
    Not `smooth`: a direct call gets the surface without Taubin smoothing unless it asks (the tests'
    exact fields measure the marching-cubes surface itself); a run's `mesh_smooth` turns it on."""
    return RUN_FIELDS[name].default


def settings_of(config) -> dict:
    """export_mesh's settings saved in a run's GenerateConfig: what `generate` exported with, and what
    `python -m backend export CHECKPOINT` uses unless a flag says otherwise."""
    return dict(resolution=config.mesh_resolution, threshold=config.mesh_threshold, face_budget=config.face_budget,
                texture_size=config.texture_size, smooth=config.mesh_smooth,
                denoise=config.mesh_denoise, normal_map=config.normal_map)


def export_mesh(field, out_dir, resolution: int = _run_default("mesh_resolution"), threshold: float | None = None,
                face_budget: int = _run_default("face_budget"), texture_size: int = _run_default("texture_size"),
                smooth: bool = False, chunk: int = DEFAULT_CHUNK, bound: float = 1.0, min_component: float = 0.1,
                normal_map: bool = _run_default("normal_map"),
                denoise: bool = _run_default("mesh_denoise")) -> ExportResult:
    """Export `field` (density(points) -> [N], albedo(points) -> [N, 3] in [0, 1], points in the
    backend world [-bound, bound]^3) to out_dir. Raises UserError when there is no surface.
    threshold: the density level of the surface; None chooses it from the field's renders
    (level.surface_level, docs/export.md "The surface level").
    normal_map: also bake the undecimated surface's normals into a tangent-space normal map for the
    decimated mesh (normal_map.py; GLB normalTexture + TANGENT, OBJ map_Bump).
    denoise: feature-preserving smoothing of the marching-cubes surface before decimation
    (smooth.bilateral_smooth, guided normal filtering; docs/export.md "Flat faces, sharp edges")."""
    for name, value in (("mesh_resolution", resolution), ("texture_size", texture_size), ("face_budget", face_budget)):
        try:  # the run settings' own ranges (shared/schema.py), so export and training take the same values
            check_value(name, RUN_FIELDS[name], value)
        except SettingError as error:
            raise UserError(error.message, name) from None
    clock = _Stopwatch()
    level = surface_level(field, bound, chunk) if threshold is None else fixed_level(threshold)
    threshold = level.level
    clock.lap("level")

    grid, queried = density_grid(field, resolution, threshold, bound, chunk)
    grid, cavity_nodes = fill_cavities(grid, threshold)
    clock.lap("density")
    vertices, faces = marching_cubes(grid, threshold, bound)
    clock.lap("marching_cubes")

    mesh, dropped = cleanup.keep_main_components(cleanup.as_mesh(vertices, faces), min_component)
    if smooth:
        mesh = cleanup.smooth(mesh)
    clock.lap("cleanup")
    if denoise:
        # as_mesh: on parts a cell or two thin vertices can meet or faces lose their area; merged
        # and dropped here, before decimation (the mending after it also merges by float32 position)
        mesh = cleanup.as_mesh(bilateral_smooth(mesh.vertices, mesh.faces), mesh.faces)
        clock.lap("denoise")
    detail = mesh   # the full-resolution surface, whose normals a normal map carries
    mesh = cleanup.decimate(mesh, face_budget)
    watertight = bool(mesh.is_watertight)
    clock.lap("decimate")

    positions, normals = np.asarray(mesh.vertices), unit_normals(mesh)
    atlas = unwrap(positions, np.asarray(mesh.faces), normals, texture_size)
    clock.lap("uv")
    if atlas is not None:
        texture, fill = bake_albedo(field, positions[atlas.vertex_map], normals[atlas.vertex_map], atlas.faces,
                                    atlas.uv, texture_size, chunk)
        asset = Asset(to_gltf(positions[atlas.vertex_map]), atlas.faces, to_gltf(normals[atlas.vertex_map]),
                      uv=atlas.uv, texture=texture)
    else:
        fill = 0.0
        asset = Asset(to_gltf(positions), np.asarray(mesh.faces), to_gltf(normals),
                      colors=vertex_colors(field, positions, chunk, normals))
    clock.lap("bake")
    if normal_map and atlas is not None:   # without UVs (vertex colors) there is nothing to bake into
        _add_normal_map(asset, detail, positions[atlas.vertex_map], normals[atlas.vertex_map], texture_size)
        clock.lap("normal_map")
    paths = write_asset(asset, out_dir)
    clock.lap("write")

    stats = dict(faces=len(asset.faces), vertices=len(asset.vertices), threshold=threshold, resolution=resolution,
                 level=level.as_dict(),
                 face_budget=face_budget, texture_size=texture_size, smooth=smooth, denoise=denoise,
                 uv_ok=atlas is not None, uv_charts=atlas.charts if atlas else 0, texture_fill=round(fill, 4),
                 normal_map=asset.normal_texture is not None,
                 watertight=watertight, components_dropped=dropped, cavity_nodes_filled=cavity_nodes,
                 density_queries=queried, seconds=clock.seconds,
                 total_seconds=round(sum(clock.seconds.values()), 3))
    logger.info("exported %d faces to %s in %.1f s", stats["faces"], out_dir, stats["total_seconds"])
    return ExportResult(paths=paths, stats=stats)


def _add_normal_map(asset: Asset, detail, positions: np.ndarray, normals: np.ndarray, texture_size: int) -> None:
    """Bake `detail`'s normals into the atlas of `asset` (split vertices at `positions`, `normals`, in
    the backend frame) and attach the map and the tangents, converted to glTF's frame (a rotation:
    the tangents' handedness w stays)."""
    tangents = tangent_frames(positions, normals, asset.faces, asset.uv)
    image, _ = bake_normal_map(np.asarray(detail.vertices), np.asarray(detail.faces), unit_normals(detail),
                               positions, normals, tangents, asset.faces, asset.uv, texture_size)
    asset.normal_texture = image
    asset.tangents = np.column_stack([to_gltf(tangents[:, :3]), tangents[:, 3]])
