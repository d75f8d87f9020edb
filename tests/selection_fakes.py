"""A stand-in for texture mode's and shape mode's training (backend.texture.train_texture.train_texture,
backend.train.train with a source mesh), with their contract and outputs, for tests/test_selection.py:
those tests are about the selection's trip (Blender -> ZeroMQ -> the job's folder -> results -> Blender),
so they need exactly known results, fast, in a worker process without bpy.

Texture: texture.png (a solid colour), corner_uv.bin (the uploaded UVs byte for byte, as texture mode
keeps them; else a known layout: triangle i's corners in cell i of a 64 x 64 grid), report.json.
Shape: mesh.glb, an asymmetric block written with the backend's own GLB writer, whose box is not the
selection's. Both publish previews and progress like a real run. Not a test module."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np

from backend.events import Preview, Progress, ignore_event, never_stop
from tests.server_fakes import FakeResult

TEXTURE_RGB = (230, 20, 20)
GRID = 64
STEP_S = 0.02


def layout_uv(face_count: int) -> np.ndarray:
    """The known per-corner layout (glTF u/v) the fake makes for a mesh sent without UVs."""
    cell = np.arange(face_count)
    u0, v0 = (cell % GRID) / GRID, (cell // GRID % GRID) / GRID
    corners = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9]]) / GRID
    uv = np.stack([u0, v0], axis=1)[:, None, :] + corners[None]
    return uv.reshape(-1, 2).astype("<f4")


def shape_result_vertices() -> tuple[np.ndarray, np.ndarray]:
    """The shape result, in glTF's frame: a 1.0 x 0.5 x 0.25 block off the origin (not the selection's box)."""
    import trimesh

    block = trimesh.creation.box(extents=(1.0, 0.5, 0.25),
                                 transform=trimesh.transformations.translation_matrix((0.3, 0.1, -0.2)))
    return np.asarray(block.vertices), np.asarray(block.faces)


def fake_selection_train(config, out_dir, on_event=ignore_event, should_stop=never_stop, prior=None, resume=False):
    out_dir = Path(out_dir)
    upload = np.load(config.source_mesh)
    for step in range(1, config.steps + 1):
        if should_stop():
            return FakeResult(stopped=True)
        time.sleep(STEP_S)
        on_event(Progress(step, config.steps, t=500, loss=1.0, it_per_s=1 / STEP_S, eta_s=0.0))
        on_event(Preview(step, np.full((16, 16, 3), 40 * step % 256, np.uint8)))
    outputs = {"report.json": out_dir / "report.json"}
    report = {"source": config.source, "vertex_count": len(upload["vertices_gltf"]), "face_count": len(upload["faces"]),
              "had_uv": "corner_uv" in upload}
    if config.source == "texture":
        from PIL import Image

        png = io.BytesIO()
        Image.new("RGB", (32, 32), TEXTURE_RGB).save(png, format="PNG")
        (out_dir / "texture.png").write_bytes(png.getvalue())
        uv = upload["corner_uv"] if "corner_uv" in upload else layout_uv(len(upload["faces"]))
        (out_dir / "corner_uv.bin").write_bytes(np.ascontiguousarray(uv, "<f4").tobytes())
        outputs.update({"texture.png": out_dir / "texture.png", "corner_uv.bin": out_dir / "corner_uv.bin"})
    else:
        from backend.export.files import Asset, glb_bytes

        vertices, faces = shape_result_vertices()
        normals = np.zeros_like(vertices)  # the importer takes any; the tests look at positions only
        normals[:, 1] = 1.0
        (out_dir / "mesh.glb").write_bytes(glb_bytes(Asset(vertices, faces, normals,
                                                           colors=np.full((len(vertices), 3), 200, np.uint8))))
        outputs["mesh.glb"] = out_dir / "mesh.glb"
    (out_dir / "report.json").write_text(json.dumps(report))
    return FakeResult(outputs=outputs)
