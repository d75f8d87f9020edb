"""Exported meshes rendered by Blender in grey clay, side by side, so a surface can be judged by eye
(docs/quality.md, "Surface"). Each GLB is shown from above and, turned upside down, from below.

    python bench/render_clay.py BEFORE.glb AFTER.glb --out docs/clay_before_after.png [--size 256]

Blender is the real bpy module, headless (tests/blender_harness.py); Cycles on the CPU.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def clay_views(glb: Path, size: int, samples: int) -> list[np.ndarray]:
    """The GLB's mesh in grey clay (its textures unplugged), from above and turned over: RGB float."""
    from tests import blender_harness as harness  # a throwaway Blender user folder, then bpy
    bpy = harness.bpy

    views = []
    for upside_down in (False, True):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.import_scene.gltf(filepath=str(glb))
        (obj,) = [o for o in bpy.context.scene.objects if o.type == "MESH"]
        clay = bpy.data.materials.new("clay")
        bsdf = clay.node_tree.nodes["Principled BSDF"] if clay.use_nodes else None
        if bsdf is None:
            clay.use_nodes = True
            bsdf = clay.node_tree.nodes["Principled BSDF"]
        bsdf.inputs["Base Color"].default_value = (0.6, 0.6, 0.6, 1.0)
        bsdf.inputs["Roughness"].default_value = 0.45
        obj.data.materials.clear()
        obj.data.materials.append(clay)
        if upside_down:  # turn the mesh itself over (the importer's object may use quaternions)
            from mathutils import Matrix
            obj.data.transform(Matrix.Rotation(math.pi, 4, "X"))
        harness.stage([obj], size_px=size, samples=samples)
        with tempfile.TemporaryDirectory() as tmp:
            rgba = harness.render_png(Path(tmp) / "render.png", [obj]).astype(np.float64)
        views.append(rgba[..., :3] * (rgba[..., 3:] / 255.0) + 235.0 * (1.0 - rgba[..., 3:] / 255.0))
    return views


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("meshes", type=Path, nargs="+", help="GLB files, one column each")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args(argv)
    from PIL import Image

    columns = [clay_views(glb, args.size, args.samples) for glb in args.meshes]
    gap_h = np.full((8, args.size, 3), 255.0)
    tiles = [np.concatenate([top, gap_h, bottom], axis=0) for top, bottom in columns]
    picture = np.concatenate([x for tile in tiles for x in (tile, np.full((tile.shape[0], 8, 3), 255.0))][:-1], axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture.round().astype(np.uint8)).save(args.out)
    print(f"wrote {args.out}: columns {', '.join(map(str, args.meshes))}; top row from above, bottom row from below")
    return 0


if __name__ == "__main__":
    sys.exit(main())
