"""The README's "what you get in Blender" picture, rendered by Blender itself.

    python bench/render_in_blender.py [--prompt "a red cube"] [--steps 200] [--size 256] [--samples 32]

Headless Blender (PyPI bpy) with the built add-on installed, a real backend on loopback, Generate
(wait=True) on the shapes prior at the tiny preset, then Cycles on the CPU from one camera: the live
mesh as it stood past half the steps (left) and the imported result (right). Writes
docs/blender_render.png (over a light grey, for the README) and docs/blender_render.json (the import's
size, origin and placement, and how well the two line up).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import blender_harness as harness  # noqa: E402  (throwaway Blender user folder, then bpy)

bpy = harness.bpy


def over_grey(rgba: np.ndarray, grey: int = 235) -> np.ndarray:
    alpha = rgba[..., 3:4] / 255.0
    return (rgba[..., :3] * alpha + grey * (1 - alpha)).round().astype(np.uint8)


def main() -> None:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--size", type=int, default=256, help="pixels per picture")
    parser.add_argument("--samples", type=int, default=32, help="Cycles samples")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "blender_render.png")
    args = parser.parse_args()
    harness.install_addon()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        shot = harness.generate_and_render(Path(tmp), args.prompt, args.steps, args.size, args.samples)
    final = shot["final"]
    points = np.array([final.matrix_world @ v.co for v in final.data.vertices])
    low, high = points.min(axis=0), points.max(axis=0)
    cursor = tuple(bpy.context.scene.cursor.location)
    gap = np.full((args.size, 8, 3), 255, np.uint8)
    picture = np.concatenate([over_grey(shot["live_png"]), gap, over_grey(shot["final_png"])], axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(args.out)
    report = {
        "prompt": args.prompt, "steps": args.steps, "live_mesh_step": shot["live_step"],
        "render": {"engine": "CYCLES (CPU)", "pixels": args.size, "samples": args.samples},
        "size_setting_m": bpy.context.scene.distill3d.size,
        "dimensions_m": [round(float(d), 4) for d in final.dimensions],
        "scale": list(final.scale),
        "cursor": cursor, "origin": list(final.location),
        "bottom_z_minus_cursor_z_m": round(float(low[2] - cursor[2]), 6),
        "bbox_centre_xy_minus_cursor_xy_m": [round(float((low[i] + high[i]) / 2 - cursor[i]), 6) for i in range(2)],
        "collection": [c.name for c in final.users_collection], "name": final.name,
        "live_vs_final_silhouette_iou": round(harness.silhouette_iou(shot["live_png"], shot["final_png"]), 3),
        "rendered_mean_srgb": [round(float(c), 3) for c in
                               shot["final_png"][shot["final_png"][..., 3] > 250][:, :3].mean(axis=0) / 255],
        "texture_mean_srgb": [round(float(c), 3) for c in harness.surface_texture_color(final)],
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    bpy.ops.preferences.addon_disable(module=harness.ADDON)


if __name__ == "__main__":
    main()
