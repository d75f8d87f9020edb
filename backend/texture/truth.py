"""Texture mode measured on the exact shapes prior: the true objects as meshes, and the error of a baked
texture against an object's albedo (docs/selection.md, "Measured on the exact shapes prior").

A catalog object is an SDF with a world-space albedo (backend/priors/shapes_world.py). Its mesh, placed
with `fit none`, sits where the prior renders the object, so a texture trained on it can be compared
point by point with the object's albedo.
"""
from __future__ import annotations

import numpy as np
import torch
import trimesh

from ..cameras import DISTANCE_RANGE, sample_cameras
from ..export.frames import to_gltf
from ..priors.shapes_world import (CONE_HEIGHT, CONE_RADIUS, CUBE_HALF, CYLINDER_HEIGHT, CYLINDER_RADIUS,
                                   SPHERE_RADIUS, TORUS_MAJOR, TORUS_MINOR, CatalogObject)
from .mesh_input import SourceMesh, source_mesh_from_arrays
from .raycast import MeshRaycaster


def catalog_trimesh(shape: str, sections: int = 128) -> trimesh.Trimesh:
    """The true shape as a triangle mesh in the backend world (+Z up), as the prior poses it."""
    if shape == "cube":
        return trimesh.creation.box((2 * CUBE_HALF,) * 3)
    if shape == "sphere":
        return trimesh.creation.icosphere(subdivisions=5, radius=SPHERE_RADIUS)
    if shape == "cylinder":
        return trimesh.creation.cylinder(radius=CYLINDER_RADIUS, height=CYLINDER_HEIGHT, sections=sections)
    if shape == "cone":  # trimesh's cone stands on z = 0; the prior's is centred
        cone = trimesh.creation.cone(radius=CONE_RADIUS, height=CONE_HEIGHT, sections=sections)
        return cone.apply_translation((0.0, 0.0, -0.5 * CONE_HEIGHT))
    if shape == "torus":
        return trimesh.creation.torus(TORUS_MAJOR, TORUS_MINOR, major_sections=sections, minor_sections=sections // 2)
    raise ValueError(f"no mesh for shape {shape!r}")


def catalog_mesh(shape: str, corner_uv: np.ndarray | None = None) -> SourceMesh:
    """The true shape as a SourceMesh (through the glTF frame, as a file or an upload would bring it)."""
    mesh = catalog_trimesh(shape)
    return source_mesh_from_arrays(to_gltf(np.asarray(mesh.vertices)), np.asarray(mesh.faces), corner_uv)


def sample_surface(mesh: SourceMesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n points uniform by area on a mesh: (points [n, 3], face [n], barycentrics [n, 3])."""
    rng = np.random.default_rng(seed)
    corners = mesh.vertices[mesh.faces]
    area = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    face = rng.choice(len(area), size=n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    bary = np.column_stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2])
    return np.einsum("nk,nkd->nd", bary, corners[face]), face, bary


def texture_lookup(texture: np.ndarray, corner_uv: np.ndarray, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of the texel under surface points (face, barycentrics), UVs wrapped (glTF's repeat)."""
    uv = np.einsum("nk,nkd->nd", bary, corner_uv.reshape(-1, 3, 2)[face].astype(np.float64)) % 1.0
    h, w = texture.shape[:2]
    col = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    row = np.clip((uv[:, 1] * h).astype(int), 0, h - 1)
    return texture[row, col, :3] / 255.0


def seen_from_cameras(mesh: SourceMesh, points: np.ndarray, views: int = 64, seed: int = 0) -> np.ndarray:
    """Which surface points some training camera sees (the texture anywhere else is a guess): for each,
    whether a ray from one of `views` cameras of the training distribution reaches it unblocked."""
    cameras = sample_cameras(views, 1, 1, torch.Generator().manual_seed(seed))
    caster = MeshRaycaster(mesh.vertices, mesh.faces)
    target = torch.as_tensor(points, dtype=torch.float32)
    seen = torch.zeros(len(points), dtype=torch.bool)
    for origin in cameras.positions:
        offset = target - origin
        distance = offset.norm(dim=-1)
        t, _ = caster.cast(origin.expand_as(target), offset / distance[:, None])
        seen |= t >= distance - 1e-4 * max(DISTANCE_RANGE)
    return seen.numpy()


def texture_error(texture: np.ndarray, corner_uv: np.ndarray, fitted: SourceMesh, obj: CatalogObject,
                  n: int = 8192, seed: int = 0) -> dict:
    """Mean absolute RGB error (0..1) of a baked texture against the object's albedo, over points uniform
    on the fitted mesh: all of them, and those a training camera sees."""
    points, face, bary = sample_surface(fitted, n, seed)
    error = np.abs(texture_lookup(texture, corner_uv, face, bary)
                   - obj.albedo(torch.as_tensor(points, dtype=torch.float32)).numpy()).mean(axis=1)
    seen = seen_from_cameras(fitted, points, seed=seed)
    return {"object": obj.name, "texture_error": float(error.mean()),
            "texture_error_seen": float(error[seen].mean()) if seen.any() else None,
            "seen_fraction": float(seen.mean())}
