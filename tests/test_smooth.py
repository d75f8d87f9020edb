"""Feature-preserving smoothing (backend/export/smooth.py): flat faces come out flat, a cube's corners
stay where they were, a sphere is not shrunk, and only vertex positions change."""
import numpy as np
import pytest
import torch
import trimesh
from scipy.ndimage import gaussian_filter

from backend.export import cleanup
from backend.export.extract import marching_cubes
from backend.export.grid import grid_axis
from backend.export.smooth import bilateral_smooth, filter_normals
from backend.metrics import face_normals, surface_metrics
from backend.priors.shapes_world import CatalogObject

pytestmark = pytest.mark.usefixtures("one_thread")

RESOLUTION = 64
CORNERS = np.array([[x, y, z] for x in (-0.4, 0.4) for y in (-0.4, 0.4) for z in (-0.4, 0.4)])


def noisy_mesh(shape: str, amplitude: float = 0.006) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the exact SDF plus smooth noise (std `amplitude`, correlated over about a
    cell): bumps like a trained field's, on a known shape."""
    axis = grid_axis(RESOLUTION)
    points = torch.from_numpy(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)).float()
    noise = gaussian_filter(np.random.default_rng(0).standard_normal((RESOLUTION,) * 3), 1.0)
    sdf = CatalogObject(shape, "red").sdf(points).numpy().reshape((RESOLUTION,) * 3)
    vertices, faces = marching_cubes((-sdf + amplitude * noise / noise.std()).astype(np.float32), 0.0)
    mesh = cleanup.as_mesh(vertices, faces)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def corner_distance(vertices: np.ndarray) -> np.ndarray:
    """Distance from each true cube corner to the nearest mesh vertex."""
    return np.linalg.norm(vertices[None] - CORNERS[:, None], axis=2).min(axis=1)


@pytest.fixture(scope="module")
def cube():
    vertices, faces = noisy_mesh("cube")
    taubin = cleanup.smooth(trimesh.Trimesh(vertices, faces, process=False)).vertices
    return vertices, faces, np.asarray(taubin), bilateral_smooth(vertices, faces)


def test_a_noisy_cube_comes_out_flat_where_taubin_does_not(cube):
    vertices, faces, taubin, smoothed = cube
    obj = CatalogObject("cube", "red")
    raw, plain, after = (surface_metrics(v, faces, obj, n=4000) for v in (vertices, taubin, smoothed))
    assert raw["flat_share"] < 0.45 and plain["flat_share"] < 0.55
    assert after["flat_share"] >= 0.9
    assert after["normal_error_mean"] < 0.5 * raw["normal_error_mean"]
    assert after["accuracy"] < 0.7 * raw["accuracy"]
    # every face, the underside included, is flat
    assert min(face["flat_share"] for face in after["faces"].values()) >= 0.85


def test_the_cube_keeps_its_corners(cube):
    vertices, _, _, smoothed = cube
    assert corner_distance(vertices).max() < 0.012     # the noisy mesh reaches every corner
    assert corner_distance(smoothed).max() < 0.015     # and so does the smoothed one: not rounded off


def test_only_positions_change_and_the_mesh_stays_closed(cube):
    vertices, faces, _, smoothed = cube
    assert smoothed.shape == vertices.shape and np.isfinite(smoothed).all()
    mesh = trimesh.Trimesh(smoothed, faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    # no face turned over: each keeps a normal within 90 degrees of its noisy one
    assert (np.einsum("ij,ij->i", face_normals(vertices, faces), face_normals(smoothed, faces)) > 0).all()


def test_a_noisy_sphere_is_smoothed_without_shrinking():
    vertices, faces = noisy_mesh("sphere")
    smoothed = bilateral_smooth(vertices, faces)
    obj = CatalogObject("sphere", "red")
    before, after = surface_metrics(vertices, faces, obj, n=4000), surface_metrics(smoothed, faces, obj, n=4000)
    assert after["normal_error_mean"] < 0.5 * before["normal_error_mean"]
    assert abs(np.linalg.norm(smoothed, axis=1).mean() - np.linalg.norm(vertices, axis=1).mean()) < 1e-3
    volume = lambda v: trimesh.Trimesh(v, faces, process=False).volume  # noqa: E731
    assert volume(smoothed) == pytest.approx(volume(vertices), rel=5e-3)


def test_a_perfect_cube_is_left_as_it_is():
    box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    vertices, faces = np.asarray(box.vertices), np.asarray(box.faces)
    normals = filter_normals(vertices, faces, guided=True)
    assert np.allclose(normals, face_normals(vertices, faces), atol=1e-6)
    assert np.allclose(bilateral_smooth(vertices, faces), vertices, atol=1e-6)


def test_an_empty_mesh_is_returned_as_is():
    vertices = np.zeros((0, 3))
    assert bilateral_smooth(vertices, np.zeros((0, 3), np.int64)).shape == (0, 3)


def test_mending_treats_vertices_at_one_float32_position_as_one():
    """Smoothing can bring the vertices of a thin part together; what the file stores (float32) is
    what counts: an unwelded box (each triangle with its own three vertices) is already closed."""
    from backend.export.manifold import make_manifold

    box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    vertices = np.asarray(box.vertices)[np.asarray(box.faces).reshape(-1)]
    vertices = vertices + 1e-9 * np.random.default_rng(0).standard_normal(vertices.shape)  # below float32's step
    _, faces = make_manifold(vertices, np.arange(36).reshape(12, 3))
    assert len(faces) == 12 and len(np.unique(faces)) == 8
