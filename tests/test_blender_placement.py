"""Where generated objects land in Blender, and that the live mesh and the final mesh.glb share a frame.

Headless Blender (PyPI bpy 5.0.1) with the built add-on installed (tests/blender_harness.py). The meshes
here are built in glTF's frame, the frame every mesh leaves the backend in, and written with the
backend's own GLB writer (backend/export/files.py), not trained: these tests are about frames and
placement, so they need an exactly known, asymmetric shape.
"""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from backend.export.files import Asset, glb_bytes
from tests.blender_harness import addon, addon_module, bpy, scene  # noqa: F401  (fixtures)


def asymmetric_mesh() -> trimesh.Trimesh:
    """In glTF's frame (+Y up, front +Z): a long low block (long from back to front) with a tower at
    its front-left corner (+X is the asset's left). No rotation or mirror maps it onto itself, and its
    bounding box is not a cube."""
    block = trimesh.creation.box(extents=(0.6, 0.3, 1.2))
    tower = trimesh.creation.box(extents=(0.2, 0.5, 0.2), transform=trimesh.transformations.translation_matrix(
        (0.2, 0.4, 0.5)))
    return trimesh.util.concatenate([block, tower])


def mesh_event(vertices_gltf: np.ndarray, faces: np.ndarray) -> dict:
    """A "mesh" event as the add-on receives it (shared/PROTOCOL.md): little-endian buffers."""
    colors = np.full((len(vertices_gltf), 3), 200, np.uint8)
    return {"type": "mesh", "step": 10, "vertex_count": len(vertices_gltf), "face_count": len(faces),
            "vertices": vertices_gltf.astype("<f4").tobytes(), "faces": faces.astype("<i4").tobytes(),
            "colors": colors.tobytes()}


def glb_of(mesh: trimesh.Trimesh) -> bytes:
    """mesh.glb as the backend writes it."""
    colors = np.full((len(mesh.vertices), 3), 200, np.uint8)
    return glb_bytes(Asset(mesh.vertices, mesh.faces, mesh.vertex_normals, colors=colors))


def world_points(obj) -> np.ndarray:
    bpy.context.view_layer.update()  # matrix_world follows a changed location only once evaluated
    points = np.empty(3 * len(obj.data.vertices), np.float32)
    obj.data.vertices.foreach_get("co", points)
    points = points.reshape(-1, 3)
    matrix = np.array(obj.matrix_world)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def farthest_gap(a: np.ndarray, b: np.ndarray) -> float:
    """The largest distance from a point of either set to the nearest point of the other."""
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    return float(max(d.min(axis=1).max(), d.min(axis=0).max()))


def test_live_mesh_and_imported_glb_overlap(scene):
    mesh = asymmetric_mesh()
    location, size = (0.3, -0.7, 0.2), 1.5
    live = addon_module("proxy").show_mesh("frame check (training)", mesh_event(mesh.vertices, mesh.faces),
                                           location, size)
    (final,) = addon_module("importer").import_glb(glb_of(mesh), "frame check", location, size)
    live_points, final_points = world_points(live), world_points(final)
    assert farthest_gap(live_points, final_points) < 1e-4
    # The test can fail: a live mesh whose glTF coordinates went in as Blender's would sit elsewhere.
    placement = addon_module("placement")
    unconverted = placement.fitted(mesh.vertices, size) + np.array(location, np.float32)
    assert farthest_gap(unconverted, final_points) > 0.1
    # Both face the way Blender's glTF importer puts an asset: its front (+Z, where the tower stands)
    # toward Blender's -Y, its left (+X) toward Blender's +X, its up (+Y) up.
    height = final_points[:, 2]
    tower = height > (height.min() + height.max()) / 2  # the block is under half the height
    assert final_points[tower, 1].mean() < location[1] and final_points[tower, 0].mean() > location[0]


def test_import_sits_on_the_cursor_at_the_set_size(scene):
    mesh = asymmetric_mesh()
    cursor = tuple(scene.cursor.location)
    for obj in scene.objects:
        obj.select_set(False)
    objects = addon_module("importer").import_glb(glb_of(mesh), "a red cube", cursor, 2.0)
    (obj,) = objects
    points = world_points(obj)
    low, high = points.min(axis=0), points.max(axis=0)
    assert obj.name == "a red cube" and obj.data.name == "a red cube"
    assert max(high - low) == pytest.approx(2.0, rel=1e-5)                 # 2 m across its largest side...
    assert tuple(obj.scale) == (1.0, 1.0, 1.0)                              # ...with the scale applied
    assert tuple(obj.location) == pytest.approx(cursor)                     # origin on the 3D cursor,
    assert low[2] == pytest.approx(cursor[2], abs=1e-5)                     # at the bottom: resting on it
    assert (low[:2] + high[:2]) / 2 == pytest.approx(cursor[:2], abs=1e-5)  # and centred over it
    assert [c.name for c in obj.users_collection] == [addon_module("proxy").COLLECTION]
    assert obj.select_get() and bpy.context.view_layer.objects.active == obj
    assert [o.name for o in bpy.context.selected_objects] == [obj.name]


def test_variations_stand_in_a_row(scene):
    placement = addon_module("placement")
    slots = [placement.slot_location((1.0, 2.0, 3.0), i, 0.5) for i in range(3)]
    assert slots[0] == (1.0, 2.0, 3.0)
    assert [s[0] for s in slots] == pytest.approx([1.0, 1.0 + 0.5 * (1 + placement.ROW_GAP),
                                                   1.0 + 1.0 * (1 + placement.ROW_GAP)])
    assert all(s[1:] == (2.0, 3.0) for s in slots)
