"""The artist's mesh coming in: read (a .glb/.gltf/.obj file, or arrays from the Blender add-on), checked with
one clear sentence per problem, and placed in the field's box (docs/selection.md, "The input mesh").

Frames: mesh files and uploads are in glTF's frame (+Y up, front +Z), like every mesh that leaves the backend;
`SourceMesh.vertices` are in the backend world (+Z up), converted by backend/export/frames.py `from_gltf`
(docs/frames.md). UVs are per triangle corner, [F*3, 2] float32, glTF's convention: u across the image, v down.

Open and non-manifold meshes are fine: texture mode only casts rays at the surface and bakes into its
triangles, so nothing needs an inside.
"""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..export.frames import from_gltf, to_gltf

logger = logging.getLogger(__name__)

MAX_FACES = 1_000_000
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".npz")  # .npz: an upload as saved by save_upload (lossless)
FIT_MODES = ("auto", "none")
# `fit auto` puts the mesh's bounding sphere (about the box centre) at this radius: the size of the shapes
# prior's objects (shapes_world.SHAPE_RADIUS 0.5-0.69) and a little above the NeRF's starting blob (0.5),
# so the training cameras (distance 1.5-2, fovy 40-70 degrees) frame it as they frame a generated object.
FIT_RADIUS = 0.6


@dataclass
class SourceMesh:
    """A triangle mesh in the backend world. corner_uv, when the mesh has a UV layer: [F*3, 2] float32, one
    (u, v) per corner of each triangle in face order, glTF's convention (v down the image)."""

    vertices: np.ndarray            # [V, 3] float64, backend world (+Z up)
    faces: np.ndarray               # [F, 3] int64
    corner_uv: np.ndarray | None = None

    @property
    def gltf_vertices(self) -> np.ndarray:
        """The vertices back in glTF's frame (the frame of the file or upload they came from)."""
        return to_gltf(self.vertices)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(axis=0), self.vertices.max(axis=0)


@dataclass(frozen=True)
class Fit:
    """points_in_field = (points - centre) * scale, in the backend world. The identity for `fit none`."""

    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    def apply(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float64) - np.asarray(self.centre)) * self.scale

    def undo(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, np.float64) / self.scale + np.asarray(self.centre)

    def to_dict(self) -> dict:
        return {"centre": list(self.centre), "scale": self.scale}


def check(vertices: np.ndarray, faces: np.ndarray, corner_uv: np.ndarray | None = None,
          name: str = "the mesh") -> None:
    """Raise UserError, one sentence naming the problem and the fix, for a mesh texture mode cannot use.
    vertices [V, 3], faces [F, 3] integer, corner_uv [F*3, 2] or None."""
    vertices, faces = np.asarray(vertices), np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise UserError(f"{name} has vertices of shape {vertices.shape} and faces of shape {faces.shape}: "
                        "give [V, 3] positions and [F, 3] triangles (triangulate the mesh first)")
    if len(faces) == 0 or len(vertices) == 0:
        raise UserError(f"{name} is empty ({len(vertices)} vertices, {len(faces)} faces): "
                        "select or give a mesh with at least one face")
    if len(faces) > MAX_FACES:
        raise UserError(f"{name} has {len(faces):,} triangles, more than the cap of {MAX_FACES:,}: "
                        "decimate it below the cap (Blender: the Decimate modifier) and try again")
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        raise UserError(f"{name} has {int(bad.sum())} vertices with NaN or infinite coordinates: "
                        "delete or fix them (Blender: Mesh > Clean Up) and try again")
    if not np.issubdtype(faces.dtype, np.integer):
        raise UserError(f"{name} has faces of type {faces.dtype}: give the triangles as integer vertex indices")
    if faces.min() < 0 or faces.max() >= len(vertices):
        worst = int(faces.min()) if faces.min() < 0 else int(faces.max())
        raise UserError(f"{name} has faces that index vertex {worst} but only {len(vertices)} vertices "
                        f"(0..{len(vertices) - 1}): the mesh is corrupt; export it again")
    extent = np.ptp(vertices[np.unique(faces)], axis=0)
    if np.count_nonzero(extent > 1e-9 * max(float(extent.max()), 1e-30)) < 2 or extent.max() <= 0.0:
        raise UserError(f"{name} has a degenerate bounding box (size {extent[0]:.3g} x {extent[1]:.3g} x "
                        f"{extent[2]:.3g}): its faces lie on a point or a line; give a mesh with area")
    if corner_uv is not None:
        uv = np.asarray(corner_uv)
        if uv.ndim != 2 or uv.shape[1] != 2 or len(uv) != 3 * len(faces):
            raise UserError(f"{name}'s UV layer has shape {uv.shape} but the mesh has {len(faces)} triangles, "
                            f"so it needs ({3 * len(faces)}, 2), one (u, v) per triangle corner: export it "
                            "triangulated with its UVs, or without UVs")
        if not np.isfinite(uv).all():
            raise UserError(f"{name}'s UV layer has NaN or infinite coordinates: unwrap it again, or remove it")


def source_mesh_from_arrays(vertices_gltf: np.ndarray, faces: np.ndarray,
                            corner_uv: np.ndarray | None = None, name: str = "the mesh") -> SourceMesh:
    """A SourceMesh from arrays in glTF's frame (the Blender add-on's upload): vertices [V, 3], faces
    [F, 3], corner_uv [F*3, 2] float32 or None. Checked; the UVs are kept as given, byte for byte."""
    check(vertices_gltf, faces, corner_uv, name)
    uv = None if corner_uv is None else np.ascontiguousarray(corner_uv, dtype=np.float32)
    return SourceMesh(from_gltf(np.asarray(vertices_gltf, np.float64)), np.asarray(faces, np.int64), uv)


def load_source_mesh(path: str | Path) -> SourceMesh:
    """A .glb, .gltf or .obj file as one SourceMesh: every mesh in the file with its node transforms
    applied, in the file's glTF frame converted to the backend world. The UVs are kept when every part
    has them. Raises UserError for a missing or unreadable file and for a mesh `check` refuses."""
    path = Path(path)
    name = f"the mesh {path.name}"
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise UserError(f"cannot read {path.name}: give a mesh file ending in {', '.join(MESH_SUFFIXES)}")
    if not path.is_file():
        raise UserError(f"no mesh file at {path}: check the path")
    if path.suffix.lower() == ".npz":
        return _load_upload(path, name)
    import trimesh

    try:
        scene = trimesh.load(path, force="scene", process=False)
        parts = [g for g in scene.dump() if isinstance(g, trimesh.Trimesh)]
    except Exception as error:  # trimesh raises many types for a malformed file
        raise UserError(f"cannot read {path.name} ({type(error).__name__}: {error}): "
                        "export it again as .glb or .obj") from None
    if not parts:
        raise UserError(f"{name} is empty (no triangles in the file): give a file with a mesh in it")
    vertices, faces, uvs, offset = [], [], [], 0
    for part in parts:
        vertices.append(np.asarray(part.vertices, np.float64))
        faces.append(np.asarray(part.faces, np.int64) + offset)
        offset += len(part.vertices)
        uvs.append(_corner_uv(part))
    corner_uv = np.concatenate(uvs) if all(uv is not None for uv in uvs) else None
    if corner_uv is None and any(uv is not None for uv in uvs):
        logger.warning("%s: only some parts have UVs; making a new UV layout for all", path.name)
    return source_mesh_from_arrays(np.concatenate(vertices), np.concatenate(faces), corner_uv, name)


UPLOAD_ARRAYS = ("vertices_gltf", "faces", "corner_uv")


def save_upload(path: str | Path, vertices_gltf: np.ndarray, faces: np.ndarray,
                corner_uv: np.ndarray | None = None) -> Path:
    """Store an upload (the arrays of source_mesh_from_arrays) as .npz, so that config.source_mesh can name
    it and load_source_mesh reads it back exactly (a .glb would round the UVs: see docs/selection.md)."""
    from ..fileio import write_with

    path = Path(path).with_suffix(".npz")
    arrays = {"vertices_gltf": np.asarray(vertices_gltf), "faces": np.asarray(faces)}
    if corner_uv is not None:
        arrays["corner_uv"] = np.asarray(corner_uv, np.float32)

    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            np.savez(handle, **arrays)

    return write_with(path, write)


def _load_upload(path: Path, name: str) -> SourceMesh:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in UPLOAD_ARRAYS if key in data}
    except (OSError, ValueError, zipfile.BadZipFile) as error:   # not an .npz, truncated, or pickled data
        raise UserError(f"cannot read {path.name} ({error}): upload the mesh again") from None
    if "vertices_gltf" not in arrays or "faces" not in arrays:
        raise UserError(f"{path.name} holds no vertices_gltf and faces arrays: save uploads with save_upload")
    return source_mesh_from_arrays(arrays["vertices_gltf"], arrays["faces"], arrays.get("corner_uv"), name)


def _corner_uv(mesh) -> np.ndarray | None:
    """A trimesh's per-vertex UVs (v up, as trimesh keeps them) -> per-corner glTF UVs (v down), or None."""
    uv = getattr(mesh.visual, "uv", None)
    if uv is None or len(uv) != len(mesh.vertices):
        return None
    uv = np.asarray(uv, np.float64)[np.asarray(mesh.faces).reshape(-1), :2]
    return np.column_stack([uv[:, 0], 1.0 - uv[:, 1]]).astype(np.float32)


def fit(mesh: SourceMesh, mode: str = "auto") -> tuple[SourceMesh, Fit]:
    """(the mesh placed in the field, the transform placing it). "auto": the bounding box centre goes to
    the origin and the farthest vertex to FIT_RADIUS (uniform scale, no rotation); "none": as it is, in
    the file's own coordinates (the exact-prior checks use it, so a true object sits where the prior has
    it). The outputs keep the input's own vertices, so nothing is lost undoing the transform."""
    if mode not in FIT_MODES:
        raise UserError(f"unknown fit {mode!r}: use one of {', '.join(FIT_MODES)}")
    if mode == "none":
        placement = Fit()
    else:
        used = mesh.vertices[np.unique(mesh.faces)]
        centre = 0.5 * (used.min(axis=0) + used.max(axis=0))
        radius = float(np.linalg.norm(used - centre, axis=1).max())
        placement = Fit(tuple(float(c) for c in centre), FIT_RADIUS / radius)
    fitted = SourceMesh(placement.apply(mesh.vertices), mesh.faces, mesh.corner_uv)
    if mode == "none" and np.abs(fitted.vertices).max() > 1.0:
        logger.warning("the mesh reaches outside the field's box [-1, 1]^3 with fit 'none': parts of it "
                       "will be outside the cameras' view; use fit 'auto'")
    return fitted, placement
