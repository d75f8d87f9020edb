"""What an artist sees: Blender itself (headless bpy 5.0.1, Cycles on the CPU) renders the imported
result and the live mesh from mid-training, from one camera framing them, with a light.

A real backend trains "a red cube" on the shapes prior (tiny preset, few steps), the add-on imports it
with `bpy.ops.distill3d.generate(..., wait=True)`, and the checks read the rendered pixels: the object
is where the camera looks, in its texture's colour (not the magenta of a missing image, not black,
not the grey of an unwired material), standing 1 m across on the cursor, and the live mesh lines up
with it. bench/render_in_blender.py makes the README's picture the same way.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.blender_harness import (addon, generate_and_render, scene, silhouette_iou,  # noqa: F401
                                   surface_texture_color)


def mean_color(rgba: np.ndarray) -> np.ndarray:
    """Mean sRGB (0..1) of the pixels the object covers."""
    return rgba[rgba[..., 3] > 250][:, :3].mean(axis=0) / 255.0


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_blender_renders_the_textured_result_and_the_live_mesh_lines_up(scene, tmp_path):
    shot = generate_and_render(tmp_path, "a red cube", steps=60, size_px=128, samples=8)
    final, final_png, live_png = shot["final"], shot["final_png"], shot["live_png"]
    # The import sits right: 1 m across (the default size), its bottom centre on the cursor (the origin).
    low = np.min([final.matrix_world @ c.co for c in final.data.vertices], axis=0)
    assert max(final.dimensions) == pytest.approx(1.0, rel=1e-4) and tuple(final.location) == (0.0, 0.0, 0.0)
    assert low[2] == pytest.approx(0.0, abs=1e-5)
    # The object is where the camera looks, and fills a fair part of the frame.
    coverage = final_png[..., 3] > 250
    h, w = coverage.shape
    assert coverage[h // 2, w // 2] and 0.1 < coverage.mean() < 0.9
    # It shows its texture's colour: red, lit (not black), and the texture is what colours it.
    texture = surface_texture_color(final)
    assert texture[0] > 2 * max(texture[1], texture[2])  # the backend did make a red object
    rendered = mean_color(final_png)
    assert rendered.max() > 0.3
    for wrong in ((1.0, 0.0, 1.0), (0.8, 0.8, 0.8)):  # a missing image's magenta; an unwired material's grey
        assert cosine(rendered, texture) > 0.9 > cosine(rendered, np.array(wrong))
    # The live mesh from mid-training, from the same camera, covers the same place in the same colour.
    assert shot["live_step"] < 60
    assert silhouette_iou(live_png, final_png) > 0.7
    assert cosine(mean_color(live_png), texture) > 0.9
