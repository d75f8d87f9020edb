"""Blender: the exported GLB and OBJ as Blender's own importers (PyPI bpy) see them: the material is
wired, the texture matches the albedo, the front faces -Y, and the live coarse mesh overlaps the GLB."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.export import coarse_mesh, export_mesh
from tests.helpers import ASYMMETRIC, SDFField, box_sdf


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
