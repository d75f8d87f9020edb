"""Mesh export against fields whose truth is known: analytic SDF shapes with a known albedo.

Shape: volume IoU and Chamfer distance to the true surface, watertightness. Color: the texture read
back at surface points against the field's albedo there. Files: the GLB and the OBJ triple load in
trimesh and in Blender's own importers (PyPI bpy), the material is wired, the front faces -Y.
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
from backend.export.grid import density_grid
from backend.export.raster import rasterize_triangles
from backend.export.readback import load_asset, texture_color
from backend.export.uv_bake import dilate
from backend.priors import shapes_world as world

WIDTH = 0.02  # density falloff (world units) of the test fields


class SDFField:
    """A field with a known surface: density 100 * sigmoid(-sdf / w - ln 3) equals the default
    export threshold 25 exactly on sdf = 0. Albedo: smooth and different along every axis, so a
    texel read at the wrong place or a wrong axis shows."""

    def __init__(self, sdf, scale: float = 100.0, shape: str | None = None):
        self.sdf, self.scale, self.shape = sdf, scale, shape   # shape: a catalog name, for metrics

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.sigmoid(-self.sdf(points) / WIDTH - math.log(3.0))

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return (0.5 + 0.45 * torch.tanh(points * torch.tensor([2.0, -1.5, 1.0]))).clamp(0.0, 1.0)


def box_sdf(center, half):
    center, half = torch.tensor(center), torch.tensor(half)

    def sdf(points):
        q = (points - center).abs() - half
        return q.clamp(min=0.0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0.0)
    return sdf


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
        out[name] = field, export_mesh(field, tmp_path_factory.mktemp(name), resolution=80,
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


@pytest.mark.parametrize("scale, threshold, advice", [(0.0, None, "train longer"), (20.0, None, "lower --threshold"),
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
    result = export_mesh(SDFField(sdf), tmp_path, resolution=64, face_budget=4000, texture_size=128)
    vertices = load_asset(result.paths["mesh.glb"]).vertices
    assert np.linalg.norm(vertices, axis=1).max() < world.SPHERE_RADIUS + 0.03
    assert result.stats["components_dropped"] == 1


def test_smoothing_keeps_the_shape_and_lowers_the_error(tmp_path):
    errors = []
    for smooth in (False, True):
        result = export_mesh(SDFField(world.sdf_sphere), tmp_path / str(smooth), resolution=40,
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
        result = export_mesh(field, tmp_path, resolution=48, face_budget=3000, texture_size=128)
    assert "vertex colors" in caplog.text
    assert not result.stats["uv_ok"] and "texture.png" not in result.paths
    mesh = load_asset(result.paths["mesh.glb"])
    assert mesh.visual.kind == "vertex"
    truth = field.albedo(torch.from_numpy(mesh.vertices).float()).numpy()
    assert np.abs(mesh.visual.vertex_colors[:, :3] / 255.0 - truth).max() < 0.01
    assert "mesh.mtl" not in result.paths
    obj = load_asset(result.paths["mesh.obj"])
    np.testing.assert_allclose(obj.visual.vertex_colors[:, :3], mesh.visual.vertex_colors[:, :3], atol=1)


def test_coarse_mesh_has_vertex_colors_in_the_backend_frame():
    field = SDFField(box_sdf([0.3, 0.0, 0.0], [0.2, 0.2, 0.2]))
    vertices, faces, colors = coarse_mesh(field, resolution=32)
    assert vertices.dtype == np.float32 and faces.dtype == np.int32 and colors.dtype == np.uint8
    assert len(faces) > 0 and colors.shape == vertices.shape and faces.max() < len(vertices)
    assert abs(vertices[:, 0].max() - 0.5) < 0.03 and abs(vertices[:, 0].min() - 0.1) < 0.03  # not rotated
    truth = field.albedo(torch.from_numpy(vertices)).numpy() * 255
    assert np.abs(colors - truth).max() <= 1
    empty = coarse_mesh(SDFField(world.sdf_sphere, scale=0.0), resolution=16)
    assert [a.shape for a in empty] == [(0, 3)] * 3


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


def test_mesh_occupancy_of_a_known_mesh():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    axis = (np.arange(40) + 0.5) / 20 - 1.0
    inside = mesh_occupancy(sphere.vertices, sphere.faces, axis)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    truth = np.linalg.norm(grid, axis=-1) < 0.5
    assert (inside != truth).sum() <= 0.02 * truth.sum()


def test_dilation_fills_every_texel_from_the_nearest_chart():
    """Two one-texel 'charts' of different colors: the ring next to each copies it exactly, and
    every other texel gets a mix of the two (never black)."""
    image = np.zeros((37, 20, 3), np.float32)
    filled = np.zeros((37, 20), bool)
    image[3, 3], image[30, 15] = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    filled[3, 3] = filled[30, 15] = True
    out = dilate(image, filled)
    np.testing.assert_allclose(out[2:5, 2:5].reshape(-1, 3), [[1.0, 0.0, 0.0]] * 9)
    np.testing.assert_allclose(out[29:32, 14:17].reshape(-1, 3), [[0.0, 0.0, 1.0]] * 9)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-6)
    assert out[0, 0, 0] > 0.99 and out[36, 19, 2] > 0.99     # corners: their own chart's color


def test_rasterize_triangles_covers_each_pixel_of_a_square_once():
    """Two triangles tiling a 10 x 6 rectangle: every pixel centre inside is found, by one triangle
    or (on the diagonal) both, and barycentrics rebuild the centre."""
    tri = np.array([[[2, 1], [12, 1], [12, 7]], [[2, 1], [12, 7], [2, 7]]], float)
    x, y, ids, bary = rasterize_triangles(tri, 16, 16)
    assert set(zip(x.tolist(), y.tolist())) == {(i, j) for i in range(2, 12) for j in range(1, 7)}
    centres = np.einsum("nk,nkd->nd", bary, tri[ids])
    np.testing.assert_allclose(centres, np.column_stack([x, y]) + 0.5, atol=1e-9)


# ---- Blender: the GLB and OBJ as Blender's own importers see them --------------------------------

ASYMMETRIC = dict(center=[0.25, -0.1, 0.05], half=[0.3, 0.45, 0.2])  # longest along backend y


@pytest.fixture(scope="module")
def blender(tmp_path_factory):
    """One bpy session: the GLB and the OBJ of an off-centre box, each imported with defaults."""
    bpy = pytest.importorskip("bpy")
    field = SDFField(box_sdf(**ASYMMETRIC))
    result = export_mesh(field, tmp_path_factory.mktemp("blender"), resolution=64, face_budget=4000,
                         texture_size=256)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(result.paths["mesh.glb"]))
    glb = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    bpy.ops.wm.obj_import(filepath=str(result.paths["mesh.obj"]))
    obj = [o for o in bpy.context.scene.objects if o.type == "MESH" and o not in glb]
    return field, glb, obj


def world_vertices(obj) -> np.ndarray:
    matrix = np.array(obj.matrix_world)
    co = np.array([v.co[:] for v in obj.data.vertices])
    return co @ matrix[:3, :3].T + matrix[:3, 3]


def blender_to_backend(points: np.ndarray) -> np.ndarray:
    """Blender (X, Y, Z) = (y, -x, z): front (+x) toward -Y, up (+z) stays +Z."""
    return np.column_stack([-points[:, 1], points[:, 0], points[:, 2]])


@pytest.mark.parametrize("which", ["glb", "obj"])
def test_blender_imports_a_textured_mesh_with_a_wired_material(blender, which):
    _, glb, obj = blender
    objects = {"glb": glb, "obj": obj}[which]
    assert len(objects) == 1
    mesh = objects[0].data
    assert len(mesh.polygons) > 0 and len(mesh.uv_layers) == 1
    nodes = mesh.materials[0].node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    base = bsdf.inputs["Base Color"]
    assert base.is_linked and base.links[0].from_node.type == "TEX_IMAGE"
    image = base.links[0].from_node.image
    assert tuple(image.size) == (256, 256) and image.has_data
    assert bsdf.inputs["Metallic"].default_value == 0.0


def test_blender_texture_matches_the_albedo(blender):
    field, glb, _ = blender
    obj = glb[0]
    mesh = obj.data
    image = next(n for n in mesh.materials[0].node_tree.nodes if n.type == "TEX_IMAGE").image
    width, height = image.size
    pixels = np.array(image.pixels[:]).reshape(height, width, 4)  # row 0 = bottom (v = 0)
    uv = np.array([d.uv[:] for d in mesh.uv_layers[0].data])
    loops = np.array([p.loop_indices[:] for p in mesh.polygons])
    vertex_of_loop = np.array([loop.vertex_index for loop in mesh.loops])
    points = world_vertices(obj)[vertex_of_loop[loops]].mean(axis=1)   # triangle centroids
    centroid_uv = uv[loops].mean(axis=1)
    col = np.clip((centroid_uv[:, 0] * width).astype(int), 0, width - 1)
    row = np.clip((centroid_uv[:, 1] * height).astype(int), 0, height - 1)
    seen = pixels[row, col, :3]
    truth = field.albedo(torch.from_numpy(blender_to_backend(points)).float()).numpy()
    error = np.abs(seen - truth).max(axis=1)
    assert error.mean() < 0.02 and np.percentile(error, 99.5) < 0.06


@pytest.mark.parametrize("which", ["glb", "obj"])
def test_blender_front_faces_minus_y_and_up_is_z(blender, which):
    _, glb, obj = blender
    objects = {"glb": glb, "obj": obj}[which]
    assert len(objects) == 1
    points = world_vertices(objects[0])
    center, half = np.array(ASYMMETRIC["center"]), np.array(ASYMMETRIC["half"])
    # Blender (X, Y, Z) = (y, -x, z) of the backend box
    lo = np.array([center[1] - half[1], -(center[0] + half[0]), center[2] - half[2]])
    hi = np.array([center[1] + half[1], -(center[0] - half[0]), center[2] + half[2]])
    np.testing.assert_allclose(points.min(axis=0), lo, atol=0.02)
    np.testing.assert_allclose(points.max(axis=0), hi, atol=0.02)
