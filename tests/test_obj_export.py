"""mesh.obj as trimesh writes it (backend/export/files.py), read back by Blender's own OBJ importer
(PyPI bpy): every triangle corner lands where the GLB's lands, with the same UV and normal, and the
material shows texture.png; the vertex-color fallback keeps its colors. Frames: docs/frames.md."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from backend.export.files import Asset, write_asset


@pytest.fixture(scope="module")
def bpy():
    """Imported when a test runs, not when pytest collects this file: tests/blender_harness.py must
    point Blender's user folders elsewhere before the first import of bpy in the process."""
    return pytest.importorskip("bpy")


def corner_asset(**visual) -> Asset:
    """An off-centre box whose 36 triangle corners are separate vertices, each with its own random UV
    (given by the caller) and its own tilted normal: a swapped, flipped or merged corner, or a normal
    recomputed from the faces instead of the one written, changes what the importers read."""
    box = trimesh.creation.box(extents=(0.6, 0.9, 0.4))
    box.apply_translation((0.2, -0.1, 0.05))
    vertices = box.vertices[box.faces].reshape(-1, 3)
    faces = np.arange(len(vertices)).reshape(-1, 3)
    normals = np.repeat(box.face_normals, 3, axis=0) + 0.3 * np.random.default_rng(2).standard_normal((36, 3))
    return Asset(vertices, faces, normals / np.linalg.norm(normals, axis=1, keepdims=True), **visual)


def gltf_to_blender(points: np.ndarray) -> np.ndarray:
    """glTF (X, Y, Z) -> Blender (X, -Z, Y): +Y up becomes +Z up (docs/frames.md)."""
    return np.column_stack([points[:, 0], -points[:, 2], points[:, 1]])


def import_file(bpy, importer: str, path) -> object:
    """The one mesh object Blender's `importer` ("obj" or "glb") makes from `path`. No factory reset
    first: it would reset the preferences too, and with them the add-on other test modules install."""
    before = set(bpy.data.objects)
    {"obj": bpy.ops.wm.obj_import, "glb": bpy.ops.import_scene.gltf}[importer](filepath=str(path))
    (obj,) = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
    return obj


def corners(obj) -> np.ndarray:
    """One row per triangle corner: world position, UV and world normal, in a canonical order."""
    mesh, matrix = obj.data, np.array(obj.matrix_world)
    vertex = np.array([loop.vertex_index for loop in mesh.loops])
    position = np.array([v.co[:] for v in mesh.vertices])[vertex] @ matrix[:3, :3].T + matrix[:3, 3]
    uv = np.array([d.uv[:] for d in mesh.uv_layers[0].data])
    normal = np.array([loop.normal[:] for loop in mesh.loops]) @ matrix[:3, :3].T
    return _sorted(np.hstack([position, uv, normal]))


def _sorted(rows: np.ndarray) -> np.ndarray:
    rounded = np.round(rows, 4)
    return rows[np.lexsort(rounded.T[::-1])]


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    rng = np.random.default_rng(0)
    asset = corner_asset(uv=rng.random((36, 2)), texture=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return asset, write_asset(asset, tmp_path_factory.mktemp("obj"))


def test_blender_reads_the_obj_corner_for_corner_like_the_glb(bpy, textured):
    asset, paths = textured
    # Blender's UV v runs up the image: v = 1 - glTF's v
    expected = _sorted(np.hstack([gltf_to_blender(asset.vertices), asset.uv[:, 0:1], 1.0 - asset.uv[:, 1:2],
                                  gltf_to_blender(asset.normals)]))
    from_obj = corners(import_file(bpy, "obj", paths["mesh.obj"]))
    from_glb = corners(import_file(bpy, "glb", paths["mesh.glb"]))
    for seen in (from_obj, from_glb):
        np.testing.assert_allclose(seen[:, :5], expected[:, :5], atol=2e-6)
        np.testing.assert_allclose(seen[:, 5:], expected[:, 5:], atol=5e-4)  # Blender packs custom normals lossily


def test_blender_wires_texture_png_into_the_obj_material(bpy, textured):
    asset, paths = textured
    obj = import_file(bpy, "obj", paths["mesh.obj"])
    bsdf = next(n for n in obj.data.materials[0].node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    base = bsdf.inputs["Base Color"]
    assert base.is_linked and base.links[0].from_node.type == "TEX_IMAGE"
    image = base.links[0].from_node.image
    assert image.filepath.endswith("texture.png") and tuple(image.size) == (8, 8)
    pixels = np.array(image.pixels[:]).reshape(8, 8, 4)[::-1, :, :3]   # Blender's row 0 is the bottom
    np.testing.assert_array_equal(np.round(pixels * 255).astype(np.uint8), asset.texture)
    assert bsdf.inputs["Metallic"].default_value == 0.0


def test_the_vertex_color_fallback_reaches_blender_as_a_color_attribute(bpy, tmp_path):
    colors = np.random.default_rng(1).integers(0, 256, (36, 3), dtype=np.uint8)
    asset = corner_asset(colors=colors)
    paths = write_asset(asset, tmp_path)
    assert "mesh.mtl" not in paths and "mtllib" not in paths["mesh.obj"].read_text()
    obj = import_file(bpy, "obj", paths["mesh.obj"])
    matrix = np.array(obj.matrix_world)
    position = np.array([v.co[:] for v in obj.data.vertices]) @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(position, gltf_to_blender(asset.vertices), atol=2e-6)
    (attribute,) = obj.data.color_attributes
    assert attribute.domain == "POINT"
    seen = np.array([d.color_srgb[:3] for d in attribute.data])
    np.testing.assert_allclose(seen, colors / 255.0, atol=1e-3)
