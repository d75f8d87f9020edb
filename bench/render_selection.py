"""The "texture the selected object" picture, before and after, rendered by Blender itself.

    python bench/render_selection.py [--prompt "a blue checkered cube"] [--steps 200] [--size 256] [--samples 32]

Headless Blender (PyPI bpy) with the built add-on installed and a real backend on loopback (the real
texture loop, shapes prior). The selected object is the prior's true cube (tests/test_selection.py
`true_cube_object`), sent with fit "none" so that it sits where the prior's world has it. Cycles on the
CPU from one camera: the object before (left, no material) and after Generate with Source "Texture
selected" (right). Writes docs/selection_blender.png and docs/selection_blender.json (what the run
changed on the object, and the colours).
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

from bench.render_in_blender import over_grey  # noqa: E402
from tests import blender_harness as harness  # noqa: E402  (throwaway Blender user folder, then bpy)

bpy = harness.bpy
FAST = {"fit": "none", "hash_levels": 8, "hash_log2_table": 14, "hash_levels_start": 8, "checkpoint_every": 0}


def texture_selected(tmp: Path, args) -> dict:
    from tests.test_selection import _geometry, true_cube_object

    server = harness.Backend(tmp)
    try:
        harness.connect(server.port, timeout_s=10.0)
        harness.clear_scene()
        obj = true_cube_object()
        before = _geometry(obj)
        harness.stage([obj], args.size, args.samples)
        bpy.context.scene.view_settings.view_transform = "Standard"
        before_png = harness.render_png(tmp / "before.png", [obj])
        started = time.monotonic()
        result = bpy.ops.distill3d.generate(prompt=args.prompt, source="TEXTURE_SELECTED", method=args.method,
                                            steps=args.steps, resolution=args.resolution, texture_size=256,
                                            preview_every=0, extra=json.dumps(FAST), wait=True, timeout=3600)
        seconds = time.monotonic() - started
        assert result == {"FINISHED"}, result
        after_png = harness.render_png(tmp / "after.png", [obj])
        return {"obj": obj, "unchanged": _geometry(obj) == before, "before_png": before_png,
                "after_png": after_png, "seconds": seconds}
    finally:
        harness.addon_module("sync").reset_session()
        server.stop()


def main() -> None:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a blue checkered cube")
    parser.add_argument("--method", default="fsd")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=48, help="training render size")
    parser.add_argument("--size", type=int, default=256, help="pixels per picture")
    parser.add_argument("--samples", type=int, default=32, help="Cycles samples")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "selection_blender.png")
    args = parser.parse_args()
    harness.install_addon()
    with tempfile.TemporaryDirectory() as tmp:
        shot = texture_selected(Path(tmp), args)
    obj, after = shot["obj"], shot["after_png"]
    gap = np.full((args.size, 8, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([over_grey(shot["before_png"]), gap, over_grey(after)], axis=1)).save(args.out)
    covered = after[..., 3] > 250
    report = {
        "prompt": args.prompt, "method": args.method, "steps": args.steps, "training_resolution": args.resolution,
        "request_extra": FAST, "render": {"engine": "CYCLES (CPU)", "pixels": args.size, "samples": args.samples},
        "geometry_and_transform_unchanged": shot["unchanged"], "vertices": len(obj.data.vertices),
        "uv_layers": [layer.name for layer in obj.data.uv_layers],
        "material": obj.material_slots[0].material.name, "slot_link": obj.material_slots[0].link,
        "rendered_mean_srgb_after": [round(float(c), 3) for c in after[covered][:, :3].mean(axis=0) / 255],
        "texture_mean_srgb": [round(float(c), 3) for c in harness.surface_texture_color(obj)],
        "generate_seconds": round(shot["seconds"], 1),
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    bpy.ops.preferences.addon_disable(module=harness.ADDON)
    print(json.dumps(report, indent=1), f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
