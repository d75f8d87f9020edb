"""From a raw marching-cubes surface to an asset mesh: drop floaters, optionally smooth, decimate,
mend to a closed manifold (manifold.py)."""
from __future__ import annotations

import logging

import fast_simplification
import numpy as np
import trimesh

from ..errors import UserError
from .manifold import NotManifold, drop_coincident, make_manifold

log = logging.getLogger(__name__)


def as_mesh(vertices: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    """A trimesh with duplicate vertices merged and degenerate faces gone."""
    mesh = trimesh.Trimesh(vertices, faces, process=True)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    return mesh


def keep_main_components(mesh: trimesh.Trimesh, min_fraction: float = 0.1) -> tuple[trimesh.Trimesh, int]:
    """Keep the connected pieces whose area is at least min_fraction of the largest piece's area:
    NeRF floaters are small, separate blobs; a real multi-part object has parts of similar size.
    Returns the mesh and how many pieces were dropped."""
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    areas = np.bincount(labels, weights=mesh.area_faces)
    keep = areas >= min_fraction * areas.max()
    mesh = mesh.copy()
    mesh.update_faces(keep[labels])
    mesh.remove_unreferenced_vertices()
    return mesh, int((~keep).sum())


def smooth(mesh: trimesh.Trimesh, iterations: int = 10) -> trimesh.Trimesh:
    """Taubin's lambda|mu smoothing (Taubin 1995): removes the marching-cubes staircase
    without the shrinking of plain Laplacian smoothing."""
    mesh = mesh.copy()
    trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.52, iterations=iterations)
    return mesh


def decimate(mesh: trimesh.Trimesh, face_budget: int) -> trimesh.Trimesh:
    """Quadric edge-collapse simplification (Garland & Heckbert 1997) down to face_budget faces, then
    mended (see `mend`). The mending may add a few faces beyond the budget where it closes holes."""
    if len(mesh.faces) > face_budget:
        vertices, faces = fast_simplification.simplify(mesh.vertices, mesh.faces.astype(np.int32),
                                                       target_count=int(face_budget))
        mesh = as_mesh(vertices, faces)
    mesh = mend(mesh)
    if len(mesh.faces) == 0:
        raise UserError(f"decimating to {face_budget} faces left nothing; raise --faces")
    return mesh


def mend(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The mesh as a closed 2-manifold with no coincident faces (manifold.make_manifold): what quadric
    decimation breaks in thin parts, after merging vertices by position. If mending gives up, the
    mesh keeps its other faces, only the coincident ones go (they are what gives zero normals)."""
    try:
        vertices, faces = make_manifold(mesh.vertices, mesh.faces)
    except NotManifold as error:
        log.warning("%s: exporting it with only its coincident faces removed", error)
        vertices, faces = mesh.vertices, drop_coincident(np.asarray(mesh.faces))
    if len(faces) == len(mesh.faces) and len(vertices) == len(mesh.vertices) and np.array_equal(faces, mesh.faces):
        return mesh
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    mesh.remove_unreferenced_vertices()
    return mesh
