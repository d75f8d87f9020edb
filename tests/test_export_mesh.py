"""Mesh export against fields whose truth is known: analytic SDF shapes with a known albedo.

Shape: volume IoU and Chamfer distance to the true surface, watertightness, the threshold, floaters and
smoothing. Color: the texture read back at surface points against the field's albedo there. Files: the
GLB and the OBJ triple load in trimesh. The live coarse mesh: vertex colors, glTF's frame. (Blender's
importers: test_export_blender.py; the glTF validator and manifoldness: test_export_gltf.py.)
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from backend import metrics
from backend.errors import UserError
from backend.export import coarse_mesh, export_mesh, mesh_occupancy
from backend.export.extract import marching_cubes
from backend.export.frames import from_gltf, to_gltf
from backend.export.grid import density_grid
from backend.export.readback import load_asset, texture_color
from backend.priors import shapes_world as world
from tests.helpers import ASYMMETRIC, WIDTH, SDFField, box_sdf


SHAPES = ("sphere", "cube", "torus")


def random_surface_samples(faces: np.ndarray, n: int, seed: int = 0):
    """(face index, barycentrics) of n random points on a mesh's triangles."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, len(faces), n)
    bary = rng.dirichlet(np.ones(3), n)
    return ids, bary


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each test shape exported once: name -> (field, ExportResult)."""
    out = {}
    for name in SHAPES:
        field = SDFField(world.SHAPES[name], shape=name)
        out[name] = field, export_mesh(field, tmp_path_factory.mktemp(name), threshold=25.0, resolution=80,
                                       face_budget=6000, texture_size=256)
    return out


@pytest.mark.parametrize("name", SHAPES)
def test_exported_shape_matches_the_truth(exported, name):
    field, result = exported[name]
    mesh = load_asset(result.paths["mesh.glb"])
    vertices = mesh.vertices
    resolution = 48
    axis = metrics.grid_points(resolution)[:resolution, 2].numpy()  # x-major grid: its z axis is the axis
    inside_mesh = torch.from_numpy(mesh_occupancy(vertices, mesh.faces, axis).reshape(-1))
    inside_true = metrics.evaluate(field.sdf, metrics.grid_points(resolution)) < 0
    assert metrics.volume_iou(inside_mesh, inside_true) > 0.93
    sampled = torch.from_numpy(trimesh.Trimesh(vertices, mesh.faces, process=False).sample(2000, seed=0)).float()
    truth = metrics.surface_points(field, 4000, seed=1)
    # two samplings of the same surface are a Chamfer distance apart too: that is the floor
    floor = metrics.chamfer_distance(truth[2000:], truth[:2000])
    assert metrics.chamfer_distance(sampled, truth[:2000]) < floor + 0.002
    distance = field.sdf(sampled).abs()           # these SDFs are exact distances to the surface
    assert distance.mean() < 0.004 and distance.max() < 0.015   # the grid step is 0.025
    assert result.stats["faces"] <= 6000 and result.stats["faces"] == len(mesh.faces)
    assert result.stats["threshold"] == 25.0 and result.stats["uv_ok"]


@pytest.mark.parametrize("name, euler", [("sphere", 2), ("torus", 0)])
def test_sphere_and_torus_are_watertight_with_the_right_topology(exported, name, euler):
    _, result = exported[name]
    mesh = load_asset(result.paths["mesh.glb"])
    # UV seams split vertices in the file; weld them by position to see the surface itself
    welded = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    welded.merge_vertices(merge_tex=True, merge_norm=True)
    assert welded.is_watertight and welded.is_winding_consistent and welded.volume > 0
    assert welded.euler_number == euler
    assert result.stats["watertight"]


@pytest.mark.parametrize("name", SHAPES)
def test_texture_matches_the_albedo_at_surface_points(exported, name):
    field, result = exported[name]
    mesh = load_asset(result.paths["mesh.glb"])
    ids, bary = random_surface_samples(mesh.faces, 4000)
    points = np.einsum("nk,nkd->nd", bary, mesh.vertices[mesh.faces[ids]])
    truth = field.albedo(torch.from_numpy(points).float()).numpy()
    error = np.abs(texture_color(mesh, ids, bary) - truth).max(axis=1)
    assert error.mean() < 0.02 and np.percentile(error, 99.5) < 0.06
    # PBR material: not metallic (glTF's default metallic 1 would make it look black)
    assert mesh.visual.material.metallicFactor == 0.0


def test_texture_shows_the_albedo_a_camera_sees_not_the_one_at_the_isosurface(tmp_path):
    """A trained field's albedo is pinned only where its density is seen; at the isosurface, the soft
    surface's outer edge, it drifts. Here it is red inside the isosurface and blue outside: sampled at
    the surface the texture is mostly blue, seen it is red."""
    class Skin(SDFField):
        def albedo(self, points):
            outside = (self.sdf(points) > 0).float()[:, None]
            red, blue = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9])
            return red + (blue - red) * outside
    result = export_mesh(Skin(world.sdf_sphere), tmp_path, threshold=25.0, resolution=48, face_budget=3000,
                         texture_size=128)
    mesh = load_asset(result.paths["mesh.glb"])
    ids, bary = random_surface_samples(mesh.faces, 2000)
    error = np.abs(texture_color(mesh, ids, bary) - np.array([0.9, 0.1, 0.1])).max(axis=1)
    # (where the mesh lies a little outside the isosurface a camera does see ~10% of the blue skin;
    # sampled at the surface the error was 0.77 on average)
    assert error.mean() < 0.03 and np.percentile(error, 90) < 0.1


def test_texture_has_no_black_borders(exported):
    _, result = exported["torus"]
    image = np.asarray(Image.open(result.paths["texture.png"]).convert("RGB")).astype(int)
    # the albedo never goes below 0.05, so any dark texel is an unbaked gap a viewer would show
    assert image.min() >= 10
    assert 0.2 < result.stats["texture_fill"] < 1.0


def test_obj_triple_loads_in_trimesh_and_matches_the_glb(exported):
    _, result = exported["torus"]
    scene = trimesh.load(result.paths["mesh.glb"])
    assert isinstance(scene, trimesh.Scene) and len(scene.geometry) == 1   # one mesh, one material
    obj, glb = load_asset(result.paths["mesh.obj"]), load_asset(result.paths["mesh.glb"])
    np.testing.assert_allclose(obj.vertices, glb.vertices, atol=1e-5)
    np.testing.assert_array_equal(obj.faces, glb.faces)
    np.testing.assert_allclose(obj.visual.uv, glb.visual.uv, atol=1e-5)
    texture = obj.visual.material.image
    assert texture is not None and texture.size == (256, 256)
    assert "map_Kd texture.png" in result.paths["mesh.mtl"].read_text()


@pytest.mark.parametrize("scale, threshold, advice", [(0.0, None, "train longer"), (20.0, 25.0, "lower --threshold"),
                                                      (100.0, -1.0, "raise --threshold")])
def test_empty_or_full_field_is_a_user_error_and_writes_nothing(tmp_path, scale, threshold, advice):
    """scale 0: nothing is dense; scale 20: the peak never reaches 25; threshold -1: all is dense."""
    with pytest.raises(UserError, match=advice):
        export_mesh(SDFField(world.sdf_sphere, scale=scale), tmp_path, resolution=32, threshold=threshold)
    assert list(tmp_path.iterdir()) == []


def test_threshold_moves_the_surface(tmp_path):
    """density = 75 lies on sdf = -2 w ln 3, inside the sphere: a higher threshold, a smaller mesh."""
    result = export_mesh(SDFField(world.sdf_sphere), tmp_path, resolution=96, threshold=75.0,
                         face_budget=4000, texture_size=128)
    radius = np.linalg.norm(load_asset(result.paths["mesh.glb"]).vertices, axis=1)
    expected = world.SPHERE_RADIUS - 2 * WIDTH * math.log(3.0)
    assert abs(radius.mean() - expected) < 0.005
    assert result.stats["threshold"] == 75.0


def test_floaters_are_dropped(tmp_path):
    """A small blob beside the sphere is a NeRF floater: it must not reach the file."""
    def sdf(points):
        floater = (points - torch.tensor([0.8, 0.8, 0.8])).norm(dim=-1) - 0.06
        return torch.minimum(world.sdf_sphere(points), floater)
    result = export_mesh(SDFField(sdf), tmp_path, threshold=25.0, resolution=64, face_budget=4000, texture_size=128)
    vertices = load_asset(result.paths["mesh.glb"]).vertices
    assert np.linalg.norm(vertices, axis=1).max() < world.SPHERE_RADIUS + 0.03
    assert result.stats["components_dropped"] == 1


def test_a_hidden_cavity_is_filled(tmp_path):
    """A hollow ball, a shell from radius 0.3 to 0.5: no camera sees its inner wall, so the file holds
    the outer surface only (without the fill the inner wall, a third of the outer's area, is kept)."""
    def sdf(points):
        return torch.maximum(world.sdf_sphere(points), 0.3 - points.norm(dim=-1))
    result = export_mesh(SDFField(sdf), tmp_path, threshold=25.0, resolution=64, face_budget=4000, texture_size=128)
    radius = np.linalg.norm(load_asset(result.paths["mesh.glb"]).vertices, axis=1)
    assert radius.min() > world.SPHERE_RADIUS - 0.03 and result.stats["cavity_nodes_filled"] > 1000


def test_smoothing_keeps_the_shape_and_lowers_the_error(tmp_path):
    errors = []
    for smooth in (False, True):
        result = export_mesh(SDFField(world.sdf_sphere), tmp_path / str(smooth), threshold=25.0, resolution=40,
                             face_budget=100_000, texture_size=128, smooth=smooth)
        radius = np.linalg.norm(load_asset(result.paths["mesh.glb"]).vertices, axis=1)
        errors.append(np.abs(radius - world.SPHERE_RADIUS).mean())
    assert errors[1] < errors[0] < 0.02


def test_failed_unwrap_falls_back_to_vertex_colors(tmp_path, monkeypatch, caplog):
    def broken_atlas():
        raise RuntimeError("simulated xatlas failure")
    monkeypatch.setattr("backend.export.uv_bake.xatlas.Atlas", broken_atlas)
    field = SDFField(world.sdf_sphere)
    with caplog.at_level(logging.WARNING):
        result = export_mesh(field, tmp_path, threshold=25.0, resolution=48, face_budget=3000, texture_size=128)
    assert "vertex colors" in caplog.text
    assert not result.stats["uv_ok"] and "texture.png" not in result.paths
    mesh = load_asset(result.paths["mesh.glb"])
    assert mesh.visual.kind == "vertex"
    truth = field.albedo(torch.from_numpy(mesh.vertices).float()).numpy()
    # the seen albedo, from up to ~0.02 inside the surface, where this albedo differs by about 0.01
    assert np.abs(mesh.visual.vertex_colors[:, :3] / 255.0 - truth).max() < 0.03
    assert "mesh.mtl" not in result.paths
    obj = load_asset(result.paths["mesh.obj"])
    np.testing.assert_allclose(obj.visual.vertex_colors[:, :3], mesh.visual.vertex_colors[:, :3], atol=1)


def test_coarse_mesh_has_vertex_colors_in_the_gltf_frame():
    field = SDFField(box_sdf([0.3, 0.0, 0.0], [0.2, 0.2, 0.2]))
    vertices, faces, colors = coarse_mesh(field, threshold=25.0, resolution=32)
    assert vertices.dtype == np.float32 and faces.dtype == np.int32 and colors.dtype == np.uint8
    assert len(faces) > 0 and colors.shape == vertices.shape and faces.max() < len(vertices)
    # the box sits at backend x 0.1..0.5 (its front, +X): glTF's front is +Z
    assert abs(vertices[:, 2].max() - 0.5) < 0.03 and abs(vertices[:, 2].min() - 0.1) < 0.03
    truth = field.albedo(torch.from_numpy(from_gltf(vertices)).float()).numpy() * 255
    assert np.abs(colors - truth).max() <= 1
    empty = coarse_mesh(SDFField(world.sdf_sphere, scale=0.0), resolution=16)
    assert [a.shape for a in empty] == [(0, 3)] * 3


def test_coarse_mesh_and_final_glb_are_in_the_same_frame(tmp_path):
    """Both leave the backend in glTF's frame: the live proxy and the file of an asymmetric box
    overlap as they are, with no conversion between them."""
    field = SDFField(box_sdf(**ASYMMETRIC))
    vertices, _, _ = coarse_mesh(field, threshold=25.0, resolution=48)
    result = export_mesh(field, tmp_path, threshold=25.0, resolution=48, face_budget=2000, texture_size=64)
    loaded = trimesh.load(result.paths["mesh.glb"], process=False)
    glb = next(iter(loaded.geometry.values())).vertices      # the file's own coordinates
    np.testing.assert_allclose(vertices.min(axis=0), glb.min(axis=0), atol=0.01)
    np.testing.assert_allclose(vertices.max(axis=0), glb.max(axis=0), atol=0.01)
    # and that frame is glTF's: backend (x, y, z) -> (y, z, x)
    center, half = np.array(ASYMMETRIC["center"]), np.array(ASYMMETRIC["half"])
    np.testing.assert_allclose(glb.max(axis=0), to_gltf((center + half)[None])[0], atol=0.02)
    np.testing.assert_allclose(to_gltf(from_gltf(glb)), glb)


def test_coarse_mesh_of_a_real_nerf_model():
    """The export reads a NeRFModel through the same two methods (density, albedo). Untrained, its
    density is the initial blob at the centre, below 25 but above 1 there."""
    from backend.nerf import NeRFModel, NeRFSettings
    torch.manual_seed(0)
    model = NeRFModel(NeRFSettings())
    vertices, faces, colors = coarse_mesh(model, resolution=16, threshold=1.0)
    assert len(faces) > 0 and faces.max() < len(vertices) and colors.shape == vertices.shape
    assert np.abs(vertices).max() < 0.9      # the blob, not the box


def test_sparse_density_grid_gives_the_dense_grids_surface():
    """Querying only near the surface must not change a single triangle, thin parts included: a rod
    thinner than a coarse cell (stride 4 = 0.08 here) sticks out of the torus."""
    def torus_with_rod(points):
        rod = torch.maximum(points[:, 1:].norm(dim=-1) - 0.02, points[:, 0].abs() - 0.9)
        return torch.minimum(world.sdf_torus(points), rod)
    field = SDFField(torus_with_rod)
    dense, dense_queries = density_grid(field, 96, 25.0, stride=1)
    sparse, sparse_queries = density_grid(field, 96, 25.0, stride=4)
    for a, b in zip(marching_cubes(dense, 25.0), marching_cubes(sparse, 25.0)):
        np.testing.assert_array_equal(a, b)
    assert dense_queries == 96 ** 3 and sparse_queries < 0.3 * dense_queries
    assert marching_cubes(sparse, 25.0)[0][:, 0].max() > 0.85   # the rod's tip is there
