"""The low-poly export with a tangent-space normal map (backend/export/normal_map.py): the tangent
frames, the bake on surfaces whose answer is known, the GLB (TANGENT + normalTexture, Khronos
validator), and Blender's importers (real bpy) wiring the map with the same tangents.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from backend.export import export_mesh
from backend.export.frames import from_gltf
from backend.export.normal_map import (bake_normal_map, closest_on_triangles, decode, shading_normals,
                                       surface_samples, tangent_frames)
from backend.export.readback import glb_arrays
from backend.priors import shapes_world as world
from tests.helpers import SDFField

try:
    from tests import blender_harness   # points Blender's user folders at a temporary one before bpy loads
except pytest.skip.Exception:           # no bpy: the Blender tests skip
    blender_harness = None

pytestmark = pytest.mark.usefixtures("one_thread")


def grid_plane(n: int, size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The square [0, size]^2 at z = 0 as an n x n grid of quads, two triangles each, facing +z."""
    x, y = np.meshgrid(np.linspace(0, size, n + 1), np.linspace(0, size, n + 1), indexing="xy")
    vertices = np.column_stack([x.ravel(), y.ravel(), np.zeros(x.size)])
    i = (np.arange(n)[:, None] * (n + 1) + np.arange(n)[None, :]).ravel()
    faces = np.concatenate([np.column_stack([i, i + 1, i + n + 2]), np.column_stack([i, i + n + 2, i + n + 1])])
    return vertices, faces


def test_tangent_frame_is_orthonormal_and_mirrored_islands_flip_handedness():
    """Two quads side by side on the plane z = 0, facing +z, as two UV islands: the left one mapped
    straight, the right one mirrored in u (as a symmetric model's two halves share texels)."""
    quad, faces = grid_plane(1)
    positions = np.concatenate([quad, quad + [1.0, 0.0, 0.0]])
    faces = np.concatenate([faces, faces + 4])
    uv_up = np.concatenate([quad[:, :2] * 0.5, quad[:, :2] * [-0.5, 0.5] + [1.0, 0.0]])  # u, v up the image
    uv = np.column_stack([uv_up[:, 0], 1.0 - uv_up[:, 1]])                              # glTF: v down
    normals = np.tile([0.0, 0.0, 1.0], (8, 1))
    tangents = tangent_frames(positions, normals, faces, uv)
    t, w = tangents[:, :3], tangents[:, 3]
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.einsum("ij,ij->i", t, normals), 0.0, atol=1e-9)
    np.testing.assert_array_equal(w, [1, 1, 1, 1, -1, -1, -1, -1])
    # the tangent follows +u on the surface: +x on the left island, -x on the mirrored one
    np.testing.assert_allclose(t, np.repeat([[1.0, 0, 0], [-1.0, 0, 0]], 4, axis=0), atol=1e-9)
    # the bitangent w (n x t) follows +v up the image, which is +y on both islands
    bitangent = np.cross(normals, t) * w[:, None]
    np.testing.assert_allclose(bitangent, np.tile([0.0, 1.0, 0.0], (8, 1)), atol=1e-9)


def bake_plane(detail_normal) -> tuple[np.ndarray, np.ndarray]:
    """A two-triangle square (the low poly, UVs = its xy) baked against a 24 x 24 grid of the same
    square whose normals are all `detail_normal`; returns (the map, which texels are covered)."""
    low, low_faces = grid_plane(1)
    detail, detail_faces = grid_plane(24)
    uv = np.column_stack([low[:, 0], 1.0 - low[:, 1]]) * 0.8 + 0.1
    normals = np.tile([0.0, 0.0, 1.0], (len(low), 1))
    tangents = tangent_frames(low, normals, low_faces, uv)
    image, fill = bake_normal_map(detail, detail_faces, np.tile(detail_normal, (len(detail), 1)), low, normals,
                                  tangents, low_faces, uv, 32)
    assert 0.6 < fill < 0.7   # 0.8^2 of the texture
    covered = np.zeros((32, 32), bool)
    covered[4:28, 4:28] = True   # texel centres well inside the square
    return image, covered


def test_a_flat_face_bakes_to_the_flat_normal_and_a_tilt_to_its_tangent_space_direction():
    image, covered = bake_plane([0.0, 0.0, 1.0])
    assert (image[covered] == [128, 128, 255]).all()
    # a detail normal tilted 30 degrees toward +x (= +u, the tangent) and -y (= -v up, the bitangent)
    tilt = np.array([np.sin(np.pi / 6), 0.0, np.cos(np.pi / 6)])
    image, covered = bake_plane(tilt)
    np.testing.assert_allclose(decode(image[covered]), np.tile(tilt, (covered.sum(), 1)), atol=0.01)
    image, covered = bake_plane(tilt[[1, 0, 2]] * [1, -1, 1])
    np.testing.assert_allclose(decode(image[covered]).mean(axis=0), [0.0, -0.5, np.cos(np.pi / 6)], atol=0.01)


def test_closest_point_on_a_triangle_inside_on_an_edge_and_at_a_corner():
    tri = np.tile([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]], (3, 1, 1))
    points = np.array([[0.2, 0.2, 0.5], [0.5, -1.0, 0.0], [2.0, -1.0, 3.0]])
    closest, bary = closest_on_triangles(points, tri)
    np.testing.assert_allclose(closest, [[0.2, 0.2, 0], [0.5, 0, 0], [1, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(bary.sum(axis=1), 1.0)


# ---- The exported file ---------------------------------------------------------------------------

def glb_document(path) -> dict:
    data = path.read_bytes()
    return json.loads(data[20:20 + struct.unpack_from("<I", data, 12)[0]])


@pytest.fixture(scope="module")
def low_poly(tmp_path_factory):
    """The cube at 64^3 decimated to 400 faces, with and without a normal map. Denoising is off: these
    tests measure the bake from the marching-cubes surface itself, which on this noise-free field is
    already exact on the faces (the denoised export is measured in docs/quality.md, "Flat faces")."""
    field = SDFField(world.SHAPES["cube"], shape="cube")
    out = {}
    for normal_map in (True, False):
        out[normal_map] = export_mesh(field, tmp_path_factory.mktemp(f"cube_{normal_map}"), resolution=64,
                                      face_budget=400, texture_size=256, normal_map=normal_map, denoise=False)
    return out


def sampled_shading(path, samples: int = 4000):
    """Uniform random points on the GLB's surface (backend frame), and their shading normals without
    and with the normal map (normal_map.shading_normals: what a glTF renderer shows)."""
    from PIL import Image

    glb = glb_arrays(path)
    image = np.asarray(Image.open(path.parent / "texture_normal.png").convert("RGB"))
    faces, positions = glb["indices"], from_gltf(glb["POSITION"])
    tangents = np.column_stack([from_gltf(glb["TANGENT"][:, :3]), glb["TANGENT"][:, 3]])
    face_ids, bary = surface_samples(positions, faces, samples)
    plain, mapped = shading_normals(faces, from_gltf(glb["NORMAL"]), tangents, glb["TEXCOORD_0"], image,
                                    face_ids, bary)
    return np.einsum("nk,nkd->nd", bary, positions[faces[face_ids]]), plain, mapped


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)))


def true_normals(sdf, points: np.ndarray) -> np.ndarray:
    """The SDF's gradient at points: the true surface normal there."""
    x = torch.tensor(points, dtype=torch.float32, requires_grad=True)
    sdf(x).sum().backward()
    return x.grad.numpy().astype(np.float64)


def test_baked_cube_shades_closer_to_the_true_normals_than_the_low_poly_alone(low_poly):
    """A decimated cube's smooth vertex normals lean across every face (its corners average three
    faces); the map, baked from the 64^3 marching-cubes mesh, straightens them."""
    result = low_poly[True]
    assert result.stats["normal_map"] and result.stats["faces"] <= 410
    points, plain, mapped = sampled_shading(result.paths["mesh.glb"])
    truth = true_normals(world.SHAPES["cube"], points)
    without, with_map = angle_deg(plain, truth), angle_deg(mapped, truth)
    assert with_map.mean() < 0.5 * without.mean(), (with_map.mean(), without.mean())
    assert np.median(with_map) < 1.0 < 4.0 < np.median(without), (np.median(with_map), np.median(without))


def test_tangents_are_unit_with_unit_handedness_and_the_file_passes_the_validator(low_poly):
    from tests import gltf_validator

    path = low_poly[True].paths["mesh.glb"]
    tangents = glb_arrays(path)["TANGENT"]
    np.testing.assert_allclose(np.linalg.norm(tangents[:, :3], axis=1), 1.0, atol=1e-5)
    assert set(np.unique(tangents[:, 3])) <= {-1.0, 1.0}
    assert np.abs(np.einsum("ij,ij->i", tangents[:, :3], glb_arrays(path)["NORMAL"])).max() < 1e-4
    np.testing.assert_array_equal(glb_arrays(path)["POSITION"],
                                  glb_arrays(low_poly[False].paths["mesh.glb"])["POSITION"])
    document = glb_document(path)
    texture = document["materials"][0]["normalTexture"]["index"]
    assert document["images"][document["textures"][texture]["source"]]["mimeType"] == "image/png"
    assert "normalTexture" not in glb_document(low_poly[False].paths["mesh.glb"])["materials"][0]
    assert "texture_normal.png" not in low_poly[False].paths
    assert "map_Bump texture_normal.png" in low_poly[True].paths["mesh.mtl"].read_text()
    why = gltf_validator.unavailable()
    if why:
        pytest.skip(why)
    (report,) = gltf_validator.validate(path)
    assert (report["errors"], report["codes"]) == (0, {})


def test_without_uvs_the_export_keeps_vertex_colors_and_has_no_map(tmp_path, monkeypatch):
    def broken_atlas():
        raise RuntimeError("simulated xatlas failure")
    monkeypatch.setattr("backend.export.uv_bake.xatlas.Atlas", broken_atlas)
    result = export_mesh(SDFField(world.sdf_sphere), tmp_path, resolution=32, face_budget=500, texture_size=64,
                         normal_map=True)
    assert not result.stats["normal_map"] and "texture_normal.png" not in result.paths
    assert "TANGENT" not in glb_arrays(result.paths["mesh.glb"])


# ---- Blender (real bpy) ----------------------------------------------------------------------------

def test_blender_wires_the_normal_map_and_computes_the_same_tangents(low_poly):
    """Blender's glTF importer: a Normal Map node (tangent space, the UV map, a Non-Color image) feeds
    the BSDF's Normal; the tangents Blender computes itself (MikkTSpace) match the file's. Blender's
    OBJ importer wires map_Bump into a Normal Map node too."""
    bpy = pytest.importorskip("bpy")
    result = low_poly[True]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(result.paths["mesh.glb"]))
    (obj,) = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    bsdf = next(n for n in obj.data.materials[0].node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Normal"].is_linked
    normal_node = bsdf.inputs["Normal"].links[0].from_node
    assert normal_node.type == "NORMAL_MAP" and normal_node.space == "TANGENT"
    image_node = normal_node.inputs["Color"].links[0].from_node
    assert image_node.type == "TEX_IMAGE" and image_node.image.colorspace_settings.name == "Non-Color"
    assert tuple(image_node.image.size) == (256, 256)

    mesh = obj.data
    mesh.calc_tangents()
    matrix = np.array(obj.matrix_world)[:3, :3]
    loop_tangent = np.array([loop.tangent[:] for loop in mesh.loops]) @ matrix.T
    loop_sign = np.array([loop.bitangent_sign for loop in mesh.loops])
    vertex_of_loop = np.array([loop.vertex_index for loop in mesh.loops])
    loop_position = np.array([v.co[:] for v in mesh.vertices])[vertex_of_loop] @ matrix.T
    loop_uv = np.array([d.uv[:] for d in mesh.uv_layers[0].data])
    # the file's vertex at the same position and UV (Blender's v is up: 1 - glTF's)
    gltf_to_blender = lambda p: np.column_stack([p[:, 0], -p[:, 2], p[:, 1]])  # noqa: E731
    glb = glb_arrays(result.paths["mesh.glb"])
    positions, tangents = gltf_to_blender(glb["POSITION"]), glb["TANGENT"]
    uv = glb["TEXCOORD_0"] * [1, -1] + [0, 1]
    from scipy.spatial import cKDTree
    distance, match = cKDTree(np.hstack([positions, uv])).query(np.hstack([loop_position, loop_uv]))
    assert distance.max() < 1e-4
    cosine = np.einsum("ij,ij->i", loop_tangent / np.linalg.norm(loop_tangent, axis=1, keepdims=True),
                       gltf_to_blender(tangents[match, :3]))
    assert np.median(cosine) > 0.999 and cosine.min() > 0.9
    assert (loop_sign == tangents[match, 3]).all()

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.obj_import(filepath=str(result.paths["mesh.obj"]))
    (obj,) = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    bsdf = next(n for n in obj.data.materials[0].node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Normal"].links[0].from_node.type == "NORMAL_MAP"


def test_export_command_takes_normal_map_and_the_runs_setting_by_default():
    from backend.cli import build_parser
    from backend.config import GenerateConfig
    from backend.export import settings_of

    parser = build_parser()
    assert parser.parse_args(["export", "run", "--normal-map"]).normal_map is True
    assert parser.parse_args(["export", "run", "--no-normal-map"]).normal_map is False
    assert parser.parse_args(["export", "run"]).normal_map is None       # the run's own setting
    assert settings_of(GenerateConfig(prompt="a cube", normal_map=True))["normal_map"] is True
    assert settings_of(GenerateConfig(prompt="a cube"))["normal_map"] is False


def test_addon_option_sets_normal_map_in_the_request():
    """The built add-on (installed as Blender installs extensions): the Advanced panel shows the
    option, and ticking it puts normal_map in the request, which the protocol accepts."""
    from shared.protocol import validate_request

    if blender_harness is None:
        pytest.skip("bpy is not installed")
    blender_harness.install_addon()
    try:
        props = blender_harness.addon_module("props")
        settings = blender_harness.bpy.context.scene.distill3d
        assert ("prop", "normal_map") in blender_harness.draw_panel("DISTILL3D_PT_advanced")
        assert "normal_map" not in props.requests(settings)[0]      # off: the backend's default
        settings.normal_map = True
        (request,) = props.requests(settings)
        assert request["normal_map"] is True and validate_request(request)["normal_map"] is True
        settings.property_unset("normal_map")
    finally:
        blender_harness.bpy.ops.preferences.addon_disable(module=blender_harness.ADDON)
