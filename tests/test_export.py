"""Mesh export against fields whose truth is known: analytic SDF shapes with a known albedo.

Shape: volume IoU and Chamfer distance to the true surface, watertightness. Color: the texture read
back at surface points against the field's albedo there. Files: the GLB and the OBJ triple load in
trimesh and in Blender's own importers (PyPI bpy), the material is wired, the front faces -Y.
"""
from __future__ import annotations

import json
import logging
import math
import struct

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
from backend.export.manifold import make_manifold, unit_normals
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
    result = export_mesh(field, tmp_path_factory.mktemp("blender"), threshold=25.0, resolution=64, face_budget=4000,
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


def gltf_to_blender(points: np.ndarray) -> np.ndarray:
    """What Blender's glTF importer does to positions (and what the add-on does to the live mesh):
    glTF (X, Y, Z) -> Blender (X, -Z, Y)."""
    return np.column_stack([points[:, 0], -points[:, 2], points[:, 1]])


def test_blender_live_mesh_and_final_glb_overlap(blender):
    """The coarse mesh, placed the way the glTF importer places the GLB, covers the same box."""
    field, glb, _ = blender
    vertices, _, _ = coarse_mesh(field, threshold=25.0, resolution=48)
    proxy, imported = gltf_to_blender(vertices), world_vertices(glb[0])
    np.testing.assert_allclose(proxy.min(axis=0), imported.min(axis=0), atol=0.01)
    np.testing.assert_allclose(proxy.max(axis=0), imported.max(axis=0), atol=0.01)


# ---- Conformance: the Khronos glTF Validator, and a closed 2-manifold after the position merge ----

def lattice_sdf(points: torch.Tensor, spacing: float = 0.3, radius: float = 0.035) -> torch.Tensor:
    """Rods along x, y and z every `spacing`, inside a ball: thin parts that quadric decimation
    squeezes into back-to-back faces and edges with 4 faces (what NeRF exports showed)."""
    rods = []
    for axis in range(3):
        q = points.clone()
        q[:, axis] = 0.0
        rods.append((torch.remainder(q + spacing / 2, spacing) - spacing / 2).norm(dim=-1) - radius)
    return torch.maximum(torch.stack(rods).amin(dim=0), points.norm(dim=-1) - 0.7)


# name -> (sdf, grid resolution, face budget). The lattice budgets gave, before the mending (commit
# c9e7161): 1500 faces -> 54 back-to-back pairs and 164 edges with more than 2 faces; 800 faces ->
# 54 ACCESSOR_VECTOR3_NON_UNIT validator errors (zero normals).
CONFORMANCE = {
    "sphere undecimated": (world.sdf_sphere, 40, 100_000),
    "torus decimated": (world.sdf_torus, 64, 1500),
    "lattice decimated to 1500": (lattice_sdf, 40, 1500),
    "lattice decimated to 800": (lattice_sdf, 40, 800),
}


@pytest.fixture(scope="module")
def conformance(tmp_path_factory):
    out = {}
    for name, (sdf, resolution, budget) in CONFORMANCE.items():
        result = export_mesh(SDFField(sdf), tmp_path_factory.mktemp(name.replace(" ", "_")),
                             threshold=25.0, resolution=resolution, face_budget=budget, texture_size=64)
        out[name] = result
    return out


def test_glb_passes_the_khronos_gltf_validator(conformance):
    from tests import gltf_validator
    why = gltf_validator.unavailable()
    if why:
        pytest.skip(why)
    reports = gltf_validator.validate(*(r.paths["mesh.glb"] for r in conformance.values()))
    assert len(reports) == len(conformance)
    assert {name: (r["errors"], r["codes"]) for name, r in zip(conformance, reports)} == \
        {name: (0, {}) for name in conformance}


def glb_normals(path) -> np.ndarray:
    """The NORMAL accessor of a GLB's first primitive, read straight from the file (not recomputed)."""
    data = path.read_bytes()
    json_length = struct.unpack_from("<I", data, 12)[0]
    document = json.loads(data[20:20 + json_length])
    accessor = document["accessors"][document["meshes"][0]["primitives"][0]["attributes"]["NORMAL"]]
    view = document["bufferViews"][accessor["bufferView"]]
    offset = 20 + json_length + 8 + view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    assert accessor["componentType"] == 5126 and "byteStride" not in view   # packed float32
    return np.frombuffer(data, np.float32, count=3 * accessor["count"], offset=offset).reshape(-1, 3)


def single_fan_everywhere(faces: np.ndarray) -> bool:
    """Each vertex's opposite edges form one closed cycle: one disc of faces around it (no two
    sheets meeting at the vertex). Written plainly, apart from the export's own check."""
    link: dict[int, dict[int, int]] = {}
    for a, b, c in faces.tolist():
        for v, p, q in ((a, b, c), (b, c, a), (c, a, b)):
            if p in link.setdefault(v, {}):
                return False
            link[v][p] = q
    for cycle in link.values():
        first = next(iter(cycle))
        at, steps = cycle[first], 1
        while at != first and at in cycle and steps <= len(cycle):
            at, steps = cycle[at], steps + 1
        if at != first or steps != len(cycle):
            return False
    return True


@pytest.mark.parametrize("name", CONFORMANCE)
def test_mesh_is_a_closed_manifold_with_unit_normals(conformance, name):
    result = conformance[name]
    path = result.paths["mesh.glb"]
    normals = glb_normals(path)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    mesh = load_asset(path)
    welded = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    welded.merge_vertices(merge_tex=True, merge_norm=True)       # positions only: UV seams closed
    faces = np.asarray(welded.faces)
    assert len(np.unique(np.sort(faces, axis=1), axis=0)) == len(faces)   # no duplicate or back-to-back faces
    edges = np.sort(welded.edges, axis=1)
    assert np.unique(edges, axis=0, return_counts=True)[1].max() == 2     # no edge with 3+ faces
    assert welded.is_watertight and welded.is_winding_consistent and welded.volume > 0
    assert single_fan_everywhere(faces)
    assert result.stats["watertight"]
    # the budget holds up to the few faces that close mended holes
    assert result.stats["faces"] <= 1.02 * CONFORMANCE[name][2]


# ---- `python -m backend export CHECKPOINT`: settings from the run, flags override ---------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint as the tiny preset saves it (threshold 5, which an untrained NeRF's initial
    density blob crosses and 25 does not), with small export settings."""
    from backend.checkpoint import nerf_settings, save_checkpoint
    from backend.config import with_preset
    from backend.nerf import NeRFModel
    config = with_preset("tiny", prompt="a red cube", mesh_resolution=32, texture_size=64, face_budget=800,
                         mesh_smooth=False, mesh_threshold=5.0)
    torch.manual_seed(0)
    model = NeRFModel(nerf_settings(config.resolved()))
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(folder / "checkpoint.pt", config=config.to_dict(), step=config.steps, model=model.state_dict())
    return folder, config


def run_export(argv, capsys) -> tuple[int, dict | None, str]:
    from backend.cli import main
    code = main(["export", *map(str, argv)])
    out, err = capsys.readouterr()
    stats = json.loads(out[out.index("{"):]) if code == 0 else None
    return code, stats, err


def test_export_command_uses_the_runs_settings(tiny_checkpoint, capsys, tmp_path):
    folder, config = tiny_checkpoint
    assert config.mesh_threshold == 5.0
    code, stats, _ = run_export([folder, "--out", tmp_path], capsys)
    assert code == 0
    assert (stats["threshold"], stats["resolution"], stats["face_budget"], stats["texture_size"], stats["smooth"]) == \
        (5.0, 32, 800, 64, False)
    assert stats["density_queries"] <= 32 ** 3 and stats["faces"] <= 800
    assert Image.open(tmp_path / "texture.png").size == (64, 64)


def test_export_command_flags_override_the_runs_settings(tiny_checkpoint, capsys, tmp_path):
    folder, _ = tiny_checkpoint
    code, stats, _ = run_export([folder / "checkpoint.pt", "--out", tmp_path, "--threshold", "3", "--resolution", "24",
                                 "--faces", "300", "--texture-size", "32", "--smooth"], capsys)
    assert code == 0
    assert (stats["threshold"], stats["resolution"], stats["face_budget"], stats["texture_size"], stats["smooth"]) == \
        (3.0, 24, 300, 32, True)
    # the old hard-coded 25 is above this field's densest point: a clear error, nothing written
    code, _, err = run_export([folder, "--out", tmp_path / "high", "--threshold", "25"], capsys)
    assert code == 2 and "densest point" in err and "lower --threshold" in err
    assert not (tmp_path / "high").exists() or not any((tmp_path / "high").iterdir())


def test_corrupt_checkpoint_advice_comes_from_the_caller(tmp_path):
    from backend.checkpoint import load_checkpoint
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt or not a Distill3D checkpoint.*: delete it and run again$"):
        load_checkpoint(path)
    with pytest.raises(UserError, match=": start over without --resume$"):
        load_checkpoint(path, if_corrupt="start over without --resume")


# ---- manifold.make_manifold on small meshes built by hand ----------------------------------------

def tetrahedron(offset=(0.0, 0.0, 0.0), first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float) + offset
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]) + first
    return vertices, faces


def test_make_manifold_keeps_a_closed_manifold_and_drops_coincident_faces():
    vertices, faces = tetrahedron()
    same = make_manifold(vertices, faces)
    np.testing.assert_array_equal(same[1], faces)
    # a back-to-back pair (what decimation leaves) and a same-wound copy: the pair goes, the copy merges
    extra = np.array([[0, 1, 2], [0, 2, 1], [1, 3, 0]])
    out_vertices, out_faces = make_manifold(vertices, np.vstack([faces, extra]))
    assert len(out_vertices) == 4 and sorted(map(tuple, out_faces)) == sorted(map(tuple, faces))


def test_make_manifold_separates_sheets_touching_at_a_vertex_and_closes_holes():
    """Two balls sharing one vertex (two sheets meeting at a point), and a third ball with a face
    missing: three closed balls come out."""
    ball = trimesh.creation.icosphere(subdivisions=1, radius=0.5)
    top = int(np.argmax(ball.vertices[:, 2]))
    n = len(ball.vertices)
    upper = ball.vertices + [0.0, 0.0, 2.0 * ball.vertices[top, 2]]   # its lowest vertex on `top`
    bottom = int(np.argmin(upper[:, 2]))
    upper_faces = ball.faces + n
    upper_faces[upper_faces == bottom + n] = top
    vertices = np.vstack([ball.vertices, upper, ball.vertices + [3.0, 0.0, 0.0]])
    faces = np.vstack([ball.faces, upper_faces, ball.faces[1:] + 2 * n])
    assert not single_fan_everywhere(faces)
    out_vertices, out_faces = make_manifold(vertices, faces)
    mesh = trimesh.Trimesh(out_vertices, out_faces, process=False)
    mesh.remove_unreferenced_vertices()
    assert mesh.is_watertight and mesh.is_winding_consistent and single_fan_everywhere(mesh.faces)
    bodies = mesh.split(only_watertight=False)
    assert len(bodies) == 3 and all(body.volume > 0.9 * ball.volume for body in bodies)


def test_unit_normals_never_zero():
    """A back-to-back pair alone gives trimesh zero vertex normals; unit_normals gives unit ones."""
    mesh = trimesh.Trimesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float), np.array([[0, 1, 2], [0, 2, 1]]),
                           process=False)
    assert np.allclose(mesh.vertex_normals, 0.0)
    np.testing.assert_allclose(np.linalg.norm(unit_normals(mesh), axis=1), 1.0)


def test_mending_that_gives_up_keeps_the_mesh_without_coincident_faces(monkeypatch):
    """If make_manifold cannot close a mesh, the export goes on with the mesh minus its back-to-back
    pairs (which give zero normals) instead of failing."""
    from backend.export import cleanup, manifold

    def give_up(vertices, faces, rounds=10):
        raise manifold.NotManifold("the mesh is still not a closed manifold after 0 rounds of mending")

    monkeypatch.setattr(cleanup, "make_manifold", give_up)
    box = trimesh.creation.box()
    faces = np.vstack([box.faces, box.faces[:1, ::-1]])  # one back-to-back pair on the first face
    mended = cleanup.mend(trimesh.Trimesh(box.vertices, faces, process=False))
    assert len(mended.faces) == len(box.faces) - 1
    assert not any(sorted(f) == sorted(box.faces[0]) for f in mended.faces.tolist())
