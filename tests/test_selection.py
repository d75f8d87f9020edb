"""Starting from the artist's selection, in headless Blender (PyPI bpy 5.0.1) with the built add-on
installed (tests/blender_harness.py): the evaluated mesh going out, the errors, its trip over real
ZeroMQ on loopback into the job's folder, and the result coming back onto the selection.

The backend here is the real server (its protocol, checks, job folder and events) in this process on a
thread. In all tests but the last two, its training is a stand-in (tests/selection_fakes.py) with the
outputs of texture and shape mode, because they check the selection's trip and need exactly known
results. The last two (slow) run the real training: the texture loop on the shapes prior's true cube,
rendered with Cycles, and a shape job that starts from the selected box.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.blender_harness import (addon, addon_module, bpy, connect, draw_panel, labels,  # noqa: F401
                                   image_texture_feeds_base_color, scene, tick_until)
from tests.selection_fakes import TEXTURE_RGB, fake_selection_train, layout_uv, shape_result_vertices
from tests.server_fakes import running_server

TRANSFORM = dict(location=(1.0, -2.0, 0.5), rotation_euler=(0.3, -0.2, 0.7), scale=(2.0, 1.0, 0.5))


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """The real server with its default training (train_texture for source "texture", train with the
    shape for "shape") and prior loader; its worker process stays up between the tests that use it."""
    with running_server(tmp_path_factory.mktemp("real"), train_fn=None, prior_loader=None) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("selection"), train_fn=fake_selection_train) as server:
        yield server


def ready(server):
    """A session that has found the backend, as the panel has by the time the artist presses Generate."""
    session = connect(server.port, timeout_s=10.0)
    tick_until(lambda: session.backend == "ok", timeout_s=30)
    return session


def box_object(name: str = "Block", uv: bool = True, subdivide: bool = False, triangles: bool = False):
    """A unit box of 6 quads (so triangulation matters; 12 triangles with `triangles`) with the
    TRANSFORM and a material, made active and selected. With `uv`, a UV layer whose values differ per
    loop; with `subdivide`, a Subdivision modifier."""
    corners = [(x, y, z) for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    if triangles:
        faces = [tri for a, b, c, d in faces for tri in ((a, b, c), (a, c, d))]
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(corners, [], faces)
    if uv:
        layer = mesh.uv_layers.new(name="Artist UV")
        n = len(mesh.loops)
        values = np.stack([np.arange(n) / n, 1 - np.arange(n) / (2 * n)], axis=1).astype(np.float32)
        layer.uv.foreach_set("vector", values.ravel())
    mesh.materials.append(bpy.data.materials.get("Artist") or bpy.data.materials.new("Artist"))
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    for key, value in TRANSFORM.items():
        setattr(obj, key, value)
    if subdivide:
        modifier = obj.modifiers.new("Subdivision", "SUBSURF")
        modifier.levels = 1
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.context.view_layer.update()
    return obj


def loop_uvs(mesh, name: str | None = None) -> np.ndarray:
    layer = mesh.uv_layers[name] if name else mesh.uv_layers.active
    values = np.empty(2 * len(mesh.loops), np.float32)
    layer.uv.foreach_get("vector", values)
    return values.reshape(-1, 2)


def stored_upload(server) -> dict:
    """The mesh the newest job keeps in its folder (what a resumed job reads)."""
    newest = max((server.data_dir / "jobs").iterdir(), key=lambda folder: folder.name)
    with np.load(newest / "source_mesh.npz") as data:
        return {name: data[name] for name in data.files}


# ----- going out ----------------------------------------------------------------------------------------

def test_the_evaluated_mesh_goes_out_in_object_space_and_gltf_frame_with_its_uvs(scene):
    obj = box_object(subdivide=True)
    chosen = addon_module("selection").read(bpy.context)
    vertices = np.frombuffer(chosen.mesh["vertices"], "<f4").reshape(-1, 3)
    faces = np.frombuffer(chosen.mesh["faces"], "<i4").reshape(-1, 3)
    corner_uv = np.frombuffer(chosen.mesh["corner_uv"], "<f4").reshape(-1, 2)
    # Subdivision level 1 of 6 quads: 24 quads over 26 vertices, so 48 triangles: the modifier is applied.
    assert (len(vertices), len(faces), len(corner_uv)) == (26, 48, 144)
    assert len(obj.data.vertices) == 8  # ... and the object itself is untouched
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
    co = np.empty(3 * 26, np.float32)
    evaluated.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    # Object space (no transform applied), in glTF's frame: Blender (x, y, z) is glTF (x, z, -y).
    np.testing.assert_array_equal(vertices, np.stack([co[:, 0], co[:, 2], -co[:, 1]], axis=1))
    evaluated.calc_loop_triangles()
    tri_loops = np.array([list(t.loops) for t in evaluated.loop_triangles]).ravel()
    uv = loop_uvs(evaluated)[tri_loops]
    np.testing.assert_array_equal(corner_uv, np.stack([uv[:, 0], 1 - uv[:, 1]], axis=1))  # glTF's v runs down
    obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh_clear()
    assert chosen.has_uv and faces.max() == 25 and faces.min() == 0


def test_a_mesh_without_uvs_goes_without_and_the_panel_offers_the_source(scene):
    box_object(uv=False)
    chosen = addon_module("selection").read(bpy.context)
    assert "corner_uv" not in chosen.mesh and not chosen.has_uv and chosen.mesh["faces"].shape == (12, 3)
    scene.distill3d.source = "TEXTURE_SELECTED"
    shown = draw_panel()
    assert ("prop", "source") in shown and ("prop", "texture_target") in shown


@pytest.mark.parametrize("make, needle", [
    (lambda: None, "No active object"),
    (lambda: bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam")), "is a camera, not a mesh"),
    (lambda: bpy.data.objects.new("Hollow", bpy.data.meshes.new("Hollow")), "is an empty mesh"),
])
def test_an_unusable_selection_gets_one_sentence_in_the_panel_and_nothing_starts(scene, server, make, needle):
    session = connect(server.port)
    obj = make()
    if obj is not None:
        bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    scene.distill3d.source = "TEXTURE_SELECTED"
    assert needle in labels(draw_panel())  # shown before Generate is pressed
    with pytest.raises(RuntimeError, match=needle):
        bpy.ops.distill3d.generate(prompt="a red cube", source="TEXTURE_SELECTED", wait=True, timeout=60)
    assert needle in session.last_error and needle in labels(draw_panel()) and not session.jobs
    sentence = session.last_error
    assert sentence.count(". ") == 0 and ":" in sentence  # one sentence: the problem, then the fix


def test_a_mesh_the_backend_cannot_use_is_refused_over_the_wire_naming_the_problem(scene, server):
    session = ready(server)
    obj = box_object(uv=False)
    co = np.empty(24, np.float32)
    obj.data.vertices.foreach_get("co", co)
    co[4] = np.nan
    obj.data.vertices.foreach_set("co", co)
    obj.data.update()
    with pytest.raises(RuntimeError, match="NaN or infinite coordinates"):
        bpy.ops.distill3d.generate(prompt="a red cube", source="TEXTURE_SELECTED", wait=True, timeout=60)
    assert "NaN" in session.last_error and not session.jobs


# ----- coming back -----------------------------------------------------------------------------------------

def _geometry(obj) -> tuple:
    co = np.empty(3 * len(obj.data.vertices), np.float32)
    obj.data.vertices.foreach_get("co", co)
    return len(obj.data.vertices), len(obj.data.polygons), co.tobytes(), tuple(map(tuple, obj.matrix_world))


def _texture_of(obj):
    material = obj.material_slots[0].material
    assert image_texture_feeds_base_color(material)
    image = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE").image
    pixels = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(pixels)
    return material, image, pixels.reshape(-1, 4)


def test_texture_selected_keeps_geometry_transform_and_uvs_and_adds_the_baked_material(scene, server):
    session = connect(server.port, timeout_s=10.0)
    obj = box_object(uv=True)
    before, uv_before = _geometry(obj), loop_uvs(obj.data).tobytes()
    result = bpy.ops.distill3d.generate(prompt="a red cube", source="TEXTURE_SELECTED", steps=2, wait=True,
                                        timeout=120)
    assert result == {"FINISHED"}
    job = next(iter(session.jobs.values()))
    assert job.imported and job.object_names == [obj.name] and job.image_name  # the previews streamed
    assert _geometry(obj) == before and loop_uvs(obj.data).tobytes() == uv_before
    assert [layer.name for layer in obj.data.uv_layers] == ["Artist UV"]
    material, image, pixels = _texture_of(obj)
    # The object shows the new material; its mesh keeps its own (other objects may share the mesh).
    assert obj.material_slots[0].link == "OBJECT" and [m.name for m in obj.data.materials] == ["Artist"]
    assert tuple(image.size) == (32, 32)
    np.testing.assert_allclose(pixels[:, :3].mean(axis=0), np.array(TEXTURE_RGB) / 255, atol=0.01)
    # What reached the job's folder is what Blender sent: the triangulated box, its UVs, in glTF's frame.
    upload = stored_upload(server)
    assert upload["vertices_gltf"].shape == (8, 3) and upload["faces"].shape == (12, 3)
    assert upload["corner_uv"].shape == (36, 2) and upload["vertices_gltf"].dtype == np.float32


def test_texture_selected_without_uvs_gets_the_backends_layout_in_its_loops(scene, server):
    connect(server.port, timeout_s=10.0)
    obj = box_object(uv=False, triangles=True)
    before = _geometry(obj)
    assert bpy.ops.distill3d.generate(prompt="a red cube", source="TEXTURE_SELECTED", steps=2, wait=True,
                                      timeout=120) == {"FINISHED"}
    assert _geometry(obj) == before and obj.data.uv_layers.active.name == "Distill3D UV"
    obj.data.calc_loop_triangles()
    tri_loops = np.array([list(t.loops) for t in obj.data.loop_triangles]).ravel()
    expected = layout_uv(12)  # the fake's layout, glTF u/v per triangle corner in the order sent
    np.testing.assert_allclose(loop_uvs(obj.data)[tri_loops], np.stack([expected[:, 0], 1 - expected[:, 1]], 1),
                               atol=1e-7)
    _, image, _ = _texture_of(obj)
    assert image.packed_file is not None  # saved with the .blend


def test_a_layout_that_splits_a_quad_goes_onto_a_copy_made_of_the_sent_triangles(scene, server):
    # The fake's layout puts every triangle in its own cell, so the two triangles of a quad disagree at
    # the loops they share: one UV per loop cannot hold that, the sent triangles can.
    connect(server.port, timeout_s=10.0)
    obj = box_object(uv=False)
    before = _geometry(obj)
    assert bpy.ops.distill3d.generate(prompt="a red cube", source="TEXTURE_SELECTED", steps=2, wait=True,
                                      timeout=120) == {"FINISHED"}
    copy = bpy.data.objects["Block (textured)"]
    assert _geometry(obj) == before and not obj.data.uv_layers and obj.hide_get() and obj.hide_render
    assert len(copy.data.polygons) == 12 and np.allclose(np.array(copy.matrix_world), np.array(obj.matrix_world))
    expected = layout_uv(12)
    np.testing.assert_allclose(loop_uvs(copy.data), np.stack([expected[:, 0], 1 - expected[:, 1]], 1), atol=1e-7)
    _texture_of(copy)


def test_texture_on_a_duplicate_leaves_the_original_alone_and_hidden(scene, server):
    connect(server.port, timeout_s=10.0)
    obj = box_object(uv=True)
    before = _geometry(obj)
    assert bpy.ops.distill3d.generate(prompt="a red cube", source="TEXTURE_SELECTED", texture_target="DUPLICATE",
                                      steps=2, wait=True, timeout=120) == {"FINISHED"}
    copy = bpy.data.objects["Block (textured)"]
    assert _geometry(obj) == before and obj.material_slots[0].material.name == "Artist" and obj.hide_get()
    assert _geometry(copy)[:3] == before[:3] and np.allclose(np.array(copy.matrix_world), np.array(obj.matrix_world))
    _, first_image, _ = _texture_of(copy)
    # The same prompt again, on the copy itself: a new material and image; the first result's stay as they were.
    bpy.context.view_layer.objects.active = copy
    assert bpy.ops.distill3d.generate(prompt="a red cube", source="TEXTURE_SELECTED", steps=2, wait=True,
                                      timeout=120) == {"FINISHED"}
    _, second_image, _ = _texture_of(copy)
    assert second_image != first_image and first_image.packed_file is not None


def test_shape_from_selected_fills_the_selections_box_in_its_transform_and_hides_it(scene, server):
    connect(server.port, timeout_s=10.0)
    obj = box_object(uv=False)
    assert bpy.ops.distill3d.generate(prompt="a red cube", source="SHAPE_FROM_SELECTED", steps=2, wait=True,
                                      timeout=120) == {"FINISHED"}
    new = bpy.data.objects["a red cube"]
    assert obj.hide_get() and obj.hide_render and not new.hide_get()
    np.testing.assert_allclose(np.array(new.matrix_world), np.array(obj.matrix_world), atol=1e-6)
    co = np.empty(3 * len(new.data.vertices), np.float32)
    new.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    # The result (a 1 x 0.5 x 0.25 block, glTF) fills the unit box: centred, its longest side 1 m long.
    np.testing.assert_allclose((co.min(axis=0) + co.max(axis=0)) / 2, 0.0, atol=1e-5)
    assert abs((co.max(axis=0) - co.min(axis=0)).max() - 1.0) < 1e-5
    vertices, _ = shape_result_vertices()
    assert len(co) >= len(vertices)


# ----- the whole way, for real -------------------------------------------------------------------------------

def true_cube_object():
    """The shapes prior's cube as a Blender object (its true geometry, in the prior's place: sent with
    fit "none" it sits where the prior's world has it), moved 2 m along +X (the object's transform is not
    sent: the mesh goes in object space), active and selected."""
    from backend.export.frames import to_gltf
    from backend.texture.truth import catalog_trimesh

    cube = catalog_trimesh("cube")
    gltf = to_gltf(np.asarray(cube.vertices))
    mesh = bpy.data.meshes.new("True cube")
    mesh.from_pydata(np.stack([gltf[:, 0], -gltf[:, 2], gltf[:, 1]], 1).tolist(), [],
                     np.asarray(cube.faces).tolist())
    mesh.update()
    obj = bpy.data.objects.new("True cube", mesh)
    bpy.context.scene.collection.objects.link(obj)
    obj.location = (2.0, 0.0, 0.0)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.context.view_layer.update()
    return obj


@pytest.mark.slow
def test_the_true_cube_textured_by_the_real_backend_renders_red_in_cycles(scene, real_server, tmp_path):
    from tests.blender_harness import render_png, stage

    session = connect(real_server.port, timeout_s=10.0)
    obj = true_cube_object()
    before = _geometry(obj)
    extra = ('{"fit": "none", "hash_levels": 8, "hash_log2_table": 14, "hash_levels_start": 8, '
             '"checkpoint_every": 0}')
    assert bpy.ops.distill3d.generate(prompt="a red cube", source="TEXTURE_SELECTED", method="fsd", steps=30,
                                      resolution=32, texture_size=64, preview_every=10, extra=extra,
                                      wait=True, timeout=600) == {"FINISHED"}
    job = next(iter(session.jobs.values()))
    assert job.image_name and bpy.data.images.get(job.image_name) is not None  # previews streamed
    assert _geometry(obj) == before and obj.data.uv_layers.active.name == "Distill3D UV"
    _texture_of(obj)
    stage([obj], size_px=64, samples=8)
    bpy.context.scene.view_settings.view_transform = "Standard"
    picture = render_png(tmp_path / "textured.png", [obj]).astype(float)
    cube = picture[..., 3] > 127
    assert cube.mean() > 0.05, "the cube is not in the picture"
    r, g, b = picture[cube][:, :3].mean(axis=0)
    assert r > 2 * g and r > 2 * b, (r, g, b)  # red where the cube is


@pytest.mark.slow
def test_a_real_shape_job_grows_from_the_selection_in_its_proportions_and_place(scene, real_server):
    # A flat, long box in its own mesh (1 x 0.5 x 0.25 m along Blender's x, y, z): the field starts as
    # this shape, so after a few steps the result must have its proportions. Sent in the wrong frame,
    # they would come back permuted (y and z swapped).
    from mathutils import Matrix

    from tests.blender_harness import FAST

    connect(real_server.port, timeout_s=10.0)
    obj = box_object(uv=False)
    obj.data.transform(Matrix.Diagonal((1.0, 0.5, 0.25, 1.0)))
    obj.data.update()
    assert bpy.ops.distill3d.generate(prompt="a red cube", source="SHAPE_FROM_SELECTED", preset="tiny", steps=10,
                                      mesh_resolution=64, texture_size=64, extra=FAST, wait=True,
                                      timeout=600) == {"FINISHED"}
    new = bpy.data.objects["a red cube"]
    assert obj.hide_get() and np.allclose(np.array(new.matrix_world), np.array(obj.matrix_world), atol=1e-6)
    co = np.empty(3 * len(new.data.vertices), np.float32)
    new.data.vertices.foreach_get("co", co)
    extent = np.ptp(co.reshape(-1, 3), axis=0)
    np.testing.assert_allclose(extent / extent.max(), [1.0, 0.5, 0.25], atol=0.12)
