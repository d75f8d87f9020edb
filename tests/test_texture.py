"""Texture mode (backend/texture/, docs/selection.md): the input mesh's checks and fit, ray casting against a
cube, UVs kept byte for byte through the bake, and short end-to-end runs on the exact shapes prior."""
import json
import struct

import numpy as np
import pytest
import torch
import trimesh

import backend
from backend.cameras import orbit_cameras
from backend.cli import main
from backend.config import with_preset
from backend.errors import UserError
from backend.export.frames import to_gltf
from backend.priors.shapes_world import COLORS, CatalogObject
from backend.texture.bake import bake_texture, read_corner_uv
from backend.texture.mesh_input import (FIT_RADIUS, MAX_FACES, check, fit, load_source_mesh, save_upload,
                                        source_mesh_from_arrays)
from backend.texture.raycast import MeshRaycaster
from shared.results import CORNER_UV
from backend.texture.train_texture import train_texture
from backend.texture.truth import catalog_mesh, catalog_trimesh, sample_surface, texture_lookup

pytestmark = pytest.mark.usefixtures("one_thread")

TRIANGLE = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@pytest.mark.parametrize("vertices, faces, uv, words", [
    (np.zeros((0, 3)), np.zeros((0, 3), int), None, "is empty"),
    (np.array([[0.0, 0.0, np.nan], [1, 0, 0], [0, 1, 0]]), [[0, 1, 2]], None, "NaN or infinite coordinates"),
    (np.array([[0.0, 0.0, np.inf], [1, 0, 0], [0, 1, 0]]), [[0, 1, 2]], None, "NaN or infinite coordinates"),
    (TRIANGLE, [[0, 1, 3]], None, "index vertex 3 but only 3 vertices"),
    (TRIANGLE, [[0, 1, -1]], None, "index vertex -1"),
    (np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]]), [[0, 1, 2]], None, "degenerate bounding box"),
    (np.zeros((3, 3)), [[0, 1, 2]], None, "degenerate bounding box"),
    (TRIANGLE, [[0, 1, 2]], np.zeros((2, 2), np.float32), "needs (3, 2), one (u, v) per triangle corner"),
    (TRIANGLE, [[0, 1, 2]], np.zeros((6,), np.float32), "needs (3, 2)"),
])
def test_each_bad_mesh_gets_one_sentence_naming_the_problem_and_the_fix(vertices, faces, uv, words):
    with pytest.raises(UserError) as error:
        source_mesh_from_arrays(np.asarray(vertices, np.float32), np.asarray(faces), uv)
    message = str(error.value)
    assert words in message and message.count(". ") == 0 and ":" in message  # one sentence: problem: fix


def test_more_faces_than_the_cap_is_refused_with_the_cap_stated():
    faces = np.zeros((MAX_FACES + 1, 3), np.int32)
    with pytest.raises(UserError, match="1,000,001 triangles, more than the cap of 1,000,000: decimate"):
        check(TRIANGLE, faces)


def test_open_and_non_manifold_meshes_are_accepted():
    # a single open triangle, and three triangles on one edge (non-manifold)
    source_mesh_from_arrays(TRIANGLE, np.array([[0, 1, 2]]))
    fan = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], np.float32)
    source_mesh_from_arrays(fan, np.array([[0, 1, 2], [0, 1, 3], [0, 1, 4]]))


def test_missing_and_unknown_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="no mesh file at"):
        load_source_mesh(tmp_path / "nothing.glb")
    (tmp_path / "mesh.stl").write_text("solid")
    with pytest.raises(UserError, match=r"ending in \.glb, \.gltf, \.obj, \.npz"):
        load_source_mesh(tmp_path / "mesh.stl")


@pytest.mark.parametrize("suffix", [".glb", ".obj"])
def test_a_file_is_read_in_gltf_frame_into_the_backend_world_with_its_uvs(tmp_path, suffix):
    box = trimesh.creation.box((0.2, 0.4, 0.6))                  # glTF frame: 0.4 tall (Y up)
    uv = np.random.default_rng(0).random((len(box.vertices), 2))
    textured = trimesh.Trimesh(box.vertices, box.faces, visual=trimesh.visual.TextureVisuals(uv=uv), process=False)
    textured.export(tmp_path / f"box{suffix}")
    mesh = load_source_mesh(tmp_path / f"box{suffix}")
    low, high = mesh.bounds()
    np.testing.assert_allclose(high - low, [0.6, 0.2, 0.4], atol=1e-6)   # backend (x, y, z) = glTF (Z, X, Y)
    expected = np.column_stack([uv[:, 0], 1.0 - uv[:, 1]])[box.faces.reshape(-1)]   # per corner, v down
    np.testing.assert_allclose(mesh.corner_uv, expected, atol=1e-6)


def test_an_upload_saved_as_npz_reads_back_exactly_and_a_damaged_one_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    vertices, faces = rng.random((20, 3)).astype(np.float32), rng.integers(0, 20, (30, 3))
    uv = rng.random((90, 2)).astype(np.float32) * 1e-3                     # small v: where a float32 flip rounds
    mesh = load_source_mesh(save_upload(tmp_path / "upload", vertices, faces, uv))
    assert mesh.corner_uv.tobytes() == uv.tobytes() and np.array_equal(mesh.gltf_vertices, vertices)
    assert load_source_mesh(save_upload(tmp_path / "plain.npz", vertices, faces)).corner_uv is None
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read bad.npz"):
        load_source_mesh(tmp_path / "bad.npz")


def test_fit_auto_centres_and_scales_and_undoes_exactly_none_keeps_coordinates():
    rng = np.random.default_rng(1)
    vertices = rng.random((50, 3)) * [3.0, 1.0, 0.5] + [10.0, -4.0, 2.0]
    mesh = source_mesh_from_arrays(vertices, rng.integers(0, 50, (80, 3)))
    fitted, placement = fit(mesh, "auto")
    low, high = fitted.bounds()
    np.testing.assert_allclose(0.5 * (low + high), 0.0, atol=1e-12)
    assert np.linalg.norm(fitted.vertices, axis=1).max() == pytest.approx(FIT_RADIUS)
    np.testing.assert_allclose(placement.undo(fitted.vertices), mesh.vertices, rtol=1e-12, atol=1e-12)
    same, identity = fit(mesh, "none")
    assert np.array_equal(same.vertices, mesh.vertices) and identity.scale == 1.0
    with pytest.raises(UserError, match="unknown fit 'big': use one of auto, none"):
        fit(mesh, "big")


def slab(origins, dirs, half):
    """Analytic first hit of rays with the box [-half, half]^3: (t, hit mask, outward normal)."""
    inverse = 1.0 / dirs
    t0, t1 = (-half - origins) * inverse, (half - origins) * inverse
    near, far = torch.minimum(t0, t1), torch.maximum(t0, t1)
    t_near, axis = near.max(dim=-1)
    hit = t_near < far.min(dim=-1).values
    normal = torch.nn.functional.one_hot(axis, 3).float() * -torch.sign(dirs.gather(-1, axis[..., None]))
    return t_near, hit, normal


def test_raycast_hits_a_cube_where_the_analytic_box_does_with_exact_normals():
    caster = MeshRaycaster(catalog_trimesh("cube").vertices, catalog_trimesh("cube").faces)
    cameras = orbit_cameras(torch.tensor([0.0, 30.0, -10.0]), torch.tensor([0.0, 50.0, 200.0]),
                            torch.tensor([2.0, 1.6, 1.8]), torch.tensor([40.0, 55.0, 70.0]), 48, 48)
    hits = caster.hits(cameras)
    origins, dirs = cameras.rays()
    t, inside, normal = slab(origins, dirs, 0.4)
    clear = (inside == hits.mask) | (t - hits.t).abs().lt(1e-3)      # disagree only on silhouette pixels
    assert clear.float().mean() > 0.995 and hits.mask.float().mean() > 0.2
    both = inside & hits.mask
    torch.testing.assert_close(hits.t[both], t[both], atol=1e-5, rtol=0)
    front = both[0] & (hits.normals[0, ..., 0] > 0.5)                   # the face x = 0.4 seen head on
    assert torch.equal(hits.normals[0][front], torch.tensor([[1.0, 0.0, 0.0]]).expand(int(front.sum()), 3))
    torch.testing.assert_close(hits.points[0][front][:, 0], torch.full((int(front.sum()),), 0.4), atol=2e-6, rtol=0)
    edge_free = both & ((t[..., None] * dirs + origins).abs().lt(0.399).sum(-1) == 2)   # on a face, off its edges
    torch.testing.assert_close(hits.normals[edge_free], normal[edge_free], atol=0, rtol=0)


def island_uvs() -> tuple[np.ndarray, np.ndarray]:
    """Per-corner UVs for the 12 triangles of trimesh's box, and each triangle's island: each face pair gets
    its own square in a 3 x 2 grid of the texture, island 2 is mirrored (u runs right to left) and island 5
    is stacked on island 4 (they overlap, as a mirrored pair of a symmetric model would)."""
    mesh = catalog_trimesh("cube")
    uv, islands = np.zeros((12, 3, 2)), np.zeros(12, int)
    normals = np.round(mesh.face_normals).astype(int)
    for face in range(12):
        axis, sign = int(np.argmax(np.abs(normals[face]))), int(normals[face].sum())
        island = islands[face] = 2 * axis + (sign > 0)
        corners = mesh.vertices[mesh.faces[face]]
        a, b = [k for k in range(3) if k != axis]
        local = (corners[:, [a, b]] / 0.8 + 0.5) * 0.28 + 0.02                   # in a 0.32 cell, 0.02 margin
        if island == 2:
            local[:, 0] = 0.32 - local[:, 0]
        cell = min(island, 4)
        uv[face] = local + [0.33 * (cell % 3), 0.5 * (cell // 3)]
    return uv.reshape(-1, 2).astype(np.float32), islands


class TrueAlbedo:
    """A stand-in for the trained model in the bake: the object's own albedo."""
    device = torch.device("cpu")

    def __init__(self, obj):
        self.albedo = obj.albedo


def glb_corner_uv(path) -> np.ndarray:
    """TEXCOORD_0 of mesh.glb per triangle corner, read from the file's own buffer (no trimesh)."""
    data = path.read_bytes()
    json_length = struct.unpack_from("<I", data, 12)[0]
    gltf = json.loads(data[20:20 + json_length])
    binary = data[20 + json_length + 8:]

    def accessor(index, dtype, width):
        acc = gltf["accessors"][index]
        view = gltf["bufferViews"][acc["bufferView"]]
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        return np.frombuffer(binary, dtype, acc["count"] * width, start).reshape(acc["count"], width)

    primitive = gltf["meshes"][0]["primitives"][0]
    indices = accessor(primitive["indices"], "<u4", 1).reshape(-1)
    return accessor(primitive["attributes"]["TEXCOORD_0"], "<f4", 2)[indices]


def test_the_mesh_own_uvs_come_back_byte_for_byte_and_the_bake_matches_the_albedo(tmp_path):
    uv, islands = island_uvs()
    source = catalog_mesh("cube", uv)
    obj = CatalogObject("cube", "red", "checkered")
    baked = bake_texture(TrueAlbedo(obj), source, source, tmp_path, texture_size=256)
    assert (tmp_path / CORNER_UV).read_bytes() == uv.astype("<f4").tobytes()
    assert glb_corner_uv(tmp_path / "mesh.glb").tobytes() == uv.tobytes()
    assert baked.stats["uv_source"] == "mesh"
    points, face, bary = sample_surface(source, 4000, seed=3)
    error = np.abs(texture_lookup(baked.texture, uv, face, bary) - obj.albedo(torch.tensor(points)).numpy())
    # off a check border, each texel holds the albedo of its centre's point: colour within 8-bit rounding
    inside = (0.5 - np.abs(((points / 0.2 + 0.5) % 1.0) - 0.5)).min(axis=1) > 0.15   # 0.03 from a border
    alone = islands[face] < 4                                                       # islands 4, 5 overlap
    assert error[inside & alone].max() < 0.01 and (islands[face[inside & alone]] == 2).sum() > 100
    reread = trimesh.load(tmp_path / "mesh.glb", force="mesh", process=False)
    np.testing.assert_allclose(reread.vertices.min(0), to_gltf(source.vertices).min(0), atol=1e-6)


def test_without_uvs_xatlas_lays_out_every_triangle_in_input_order(tmp_path):
    source = catalog_mesh("cylinder")
    baked = bake_texture(TrueAlbedo(CatalogObject("cylinder", "blue")), source, source, tmp_path, texture_size=128)
    corner_uv = read_corner_uv(tmp_path / CORNER_UV)
    assert corner_uv.shape == (3 * len(source.faces), 2) and baked.stats["uv_source"] == "xatlas"
    assert np.array_equal(corner_uv, baked.corner_uv) and ((corner_uv >= 0) & (corner_uv <= 1)).all()
    assert np.allclose(baked.texture.reshape(-1, 3).mean(0) / 255.0, COLORS["blue"], atol=0.01)


def run_settings(**overrides):
    """A short run: 32 px, a small hash grid, no previews or checkpoints."""
    return {**dict(method="sds", steps=30, resolution=32, texture_size=64, hash_levels=8, hash_log2_table=14,
                   hash_levels_start=8, preview_every=0, checkpoint_every=0, fit="none"), **overrides}


def mean_texture_color(folder) -> str:
    from backend.priors.shapes_world import nearest_color
    texture = np.asarray(trimesh.load(folder / "mesh.glb", force="mesh").visual.material.baseColorTexture)
    return nearest_color(torch.tensor(texture[..., :3].reshape(-1, 3).mean(0) / 255.0)[None])[0]


@pytest.mark.slow
def test_the_true_cube_comes_out_red_for_a_red_cube_and_blue_for_a_blue_cube(tmp_path, capsys):
    mesh = tmp_path / "cube.glb"
    cube = catalog_trimesh("cube")
    trimesh.Trimesh(to_gltf(cube.vertices), cube.faces, process=False).export(mesh)
    flags = ["--steps", "30", "--resolution", "32", "--texture-size", "64", "--fit", "none", "--preview-every", "0",
             "--checkpoint-every", "0"]
    assert main(["texture", str(mesh), "a red cube", "--method", "fsd", "--out", str(tmp_path / "red")] + flags) == 0
    assert "texture error" in capsys.readouterr().out
    report = json.loads((tmp_path / "red" / "report.json").read_text())
    assert report["ground_truth"]["object"] == "red cube" and report["ground_truth"]["texture_error_seen"] < 0.15
    assert mean_texture_color(tmp_path / "red") == "red"
    for name in ("texture.png", "mesh.glb", "corner_uv.bin", "turntable.png"):
        assert (tmp_path / "red" / name).stat().st_size > 0
    result = backend.texture(mesh, "a blue cube", out=tmp_path / "blue", **run_settings())
    assert mean_texture_color(tmp_path / "blue") == "blue"
    assert result.report["ground_truth"]["object"] == "blue cube"


def test_stop_then_resume_continues_from_the_checkpoint(tmp_path):
    mesh = tmp_path / "cube.glb"
    cube = catalog_trimesh("cube")
    trimesh.Trimesh(to_gltf(cube.vertices), cube.faces, process=False).export(mesh)
    calls = iter(range(100))
    config = with_preset("draft", prompt="a red cube", source="texture", source_mesh=str(mesh),
                         **run_settings(steps=6, texture_size=32))
    stopped = train_texture(config, tmp_path / "run", should_stop=lambda: next(calls) >= 3)
    assert stopped.stopped and not (tmp_path / "run" / "texture.png").exists()
    events = []
    done = train_texture(config, tmp_path / "run", on_event=events.append, resume=True)
    steps = [e.step for e in events if type(e).__name__ == "Progress"]
    assert steps == [4, 5, 6] and (tmp_path / "run" / "texture.png").exists() and not done.stopped
    with pytest.raises(UserError, match="is for the prompt 'a red cube'"):
        train_texture(with_preset("draft", prompt="a blue cube", source="texture", source_mesh=str(mesh),
                                  **run_settings(steps=6)), tmp_path / "run", resume=True)


@pytest.fixture(scope="module")
def sd_prior(sd_folder):
    from backend.priors import load_prior
    return load_prior(str(sd_folder), offline=True)


@pytest.mark.parametrize("method", ["sds", "nfsd", "sdi", "fsd"])
def test_texture_mode_runs_offline_on_the_tiny_stable_diffusion_pipeline_with_each_method(method, sd_prior,
                                                                                         sd_folder, tmp_path):
    mesh = tmp_path / "cube.obj"
    catalog_trimesh("cube").export(mesh)
    config = with_preset("draft", prompt="a red cube", source="texture", source_mesh=str(mesh), prior=str(sd_folder),
                         offline=True, **run_settings(method=method, steps=2, texture_size=32, fit="auto"))
    result = train_texture(config, tmp_path / "run", prior=sd_prior)
    assert result.report["prior"]["name"] == sd_prior.describe()["name"] and "ground_truth" not in result.report
    assert result.report["texture"]["fit"]["scale"] == pytest.approx(FIT_RADIUS / (0.4 * 3 ** 0.5))
    assert len(read_corner_uv(tmp_path / "run" / CORNER_UV)) == 36
