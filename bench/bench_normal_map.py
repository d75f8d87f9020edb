"""Low poly with a normal map: shading-normal error of the decimated mesh with its baked map, without
it, and of the full-resolution mesh, against the true surface normals.

The fields are built-in shapes (backend/priors/shapes_world.py) whose density crosses the export
threshold on their surface, or trained checkpoints with the shape they were trained on (--truth).
Points are drawn uniformly by area on each mesh; a point's true normal is the shape's SDF gradient
there, its shading normal is what a glTF renderer shows (export/normal_map.shading_normals: the
interpolated vertex normal, perturbed by the map's texel through the interpolated tangent frame).
"vs full": the angle to the full mesh's normal at the closest point (what the bake aims for).
The GLB goes through the Khronos glTF Validator ("-" without node). --render adds a Cycles picture of
the first object's low-poly GLB in Blender, imported twice, grey clay, the Normal Map node unplugged
on the left copy (same geometry, same light).

    python bench/bench_normal_map.py                                 # sphere, torus, cube; 256^3; 5000 faces
    python bench/bench_normal_map.py --objects cube --render docs/normal_map.png
    python bench/bench_normal_map.py --checkpoint /tmp/E/torus --truth torus
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.export import cleanup, export_mesh  # noqa: E402
from backend.export.extract import marching_cubes  # noqa: E402
from backend.export.frames import from_gltf  # noqa: E402
from backend.export.grid import density_grid  # noqa: E402
from backend.export.manifold import unit_normals  # noqa: E402
from backend.export.normal_map import closest_normals, shading_normals, surface_samples  # noqa: E402
from backend.export.readback import glb_arrays  # noqa: E402
from backend.priors import shapes_world as world  # noqa: E402
from tests import gltf_validator  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


class ShapeField:
    """A shape as a field: density 100 sigmoid(-sdf / 0.02 - ln 3) is 25 (the default threshold) on
    its surface; albedo a light grey."""

    def __init__(self, sdf):
        self.sdf = sdf

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return 100.0 * torch.sigmoid(-self.sdf(points) / 0.02 - math.log(3.0))

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.full((len(points), 3), 0.7)


def true_normals(sdf, points: np.ndarray) -> np.ndarray:
    x = torch.tensor(points, dtype=torch.float32, requires_grad=True)
    sdf(x).sum().backward()
    g = x.grad.numpy().astype(np.float64)
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)))


def summary(degrees: np.ndarray) -> dict:
    return {"mean": round(float(degrees.mean()), 2), "median": round(float(np.median(degrees)), 2),
            "p90": round(float(np.percentile(degrees, 90)), 2)}


def full_mesh(field, resolution: int, threshold: float, smooth: bool):
    """The undecimated surface export_mesh bakes from (its stages up to decimation)."""
    grid, _ = density_grid(field, resolution, threshold, 1.0, 1 << 18)
    mesh, _ = cleanup.keep_main_components(cleanup.as_mesh(*marching_cubes(grid, threshold)))
    return cleanup.smooth(mesh) if smooth else mesh


def measure(name: str, field, sdf, out_dir: Path, args, threshold: float = 25.0, smooth: bool = False) -> dict:
    from PIL import Image

    started = time.perf_counter()
    result = export_mesh(field, out_dir, resolution=args.resolution, face_budget=args.faces, threshold=threshold,
                         texture_size=args.texture_size, smooth=smooth, normal_map=True)
    export_s = time.perf_counter() - started
    detail = full_mesh(field, args.resolution, threshold, smooth)
    detail_normals = unit_normals(detail)
    ids, bary = surface_samples(detail.vertices, detail.faces, args.samples)
    points = np.einsum("nk,nkd->nd", bary, np.asarray(detail.vertices)[detail.faces[ids]])
    full = np.einsum("nk,nkd->nd", bary, detail_normals[detail.faces[ids]])
    full /= np.linalg.norm(full, axis=1, keepdims=True)

    glb = glb_arrays(result.paths["mesh.glb"])
    faces, positions = glb["indices"], from_gltf(glb["POSITION"])
    tangents = np.column_stack([from_gltf(glb["TANGENT"][:, :3]), glb["TANGENT"][:, 3]])
    image = np.asarray(Image.open(result.paths["texture_normal.png"]).convert("RGB"))
    ids, bary = surface_samples(positions, faces, args.samples)
    low_points = np.einsum("nk,nkd->nd", bary, positions[faces[ids]])
    plain, mapped = shading_normals(faces, from_gltf(glb["NORMAL"]), tangents, glb["TEXCOORD_0"], image, ids, bary)
    target = closest_normals(detail.vertices, detail.faces, detail_normals, low_points)
    truth = true_normals(sdf, low_points)
    errors = None if gltf_validator.unavailable() else gltf_validator.validate(result.paths["mesh.glb"])[0]["errors"]
    return {
        "object": name, "grid": args.resolution, "full_faces": len(detail.faces), "low_faces": len(faces),
        "texture": args.texture_size, "full_mesh": summary(angles(full, true_normals(sdf, points))),
        "low_poly": summary(angles(plain, truth)), "low_poly_map": summary(angles(mapped, truth)),
        "low_poly_vs_full": summary(angles(plain, target)), "low_poly_map_vs_full": summary(angles(mapped, target)),
        "normal_map_s": result.stats["seconds"].get("normal_map"), "export_s": round(export_s, 1),
        "glb_kb": round(result.paths["mesh.glb"].stat().st_size / 1024), "validator_errors": errors,
        "glb": str(result.paths["mesh.glb"]),
    }


def render_side_by_side(glb: Path, out: Path, size: int, samples: int) -> None:
    """The GLB imported twice into Blender, grey clay; the left copy's Normal Map node unplugged."""
    from PIL import Image

    from tests import blender_harness as harness   # a throwaway Blender user folder, then bpy
    bpy = harness.bpy

    pictures = []
    for use_map in (False, True):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.import_scene.gltf(filepath=str(glb))
        (obj,) = [o for o in bpy.context.scene.objects if o.type == "MESH"]
        tree = obj.data.materials[0].node_tree
        bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
        for link in list(bsdf.inputs["Base Color"].links) + ([] if use_map else list(bsdf.inputs["Normal"].links)):
            tree.links.remove(link)
        bsdf.inputs["Base Color"].default_value = (0.6, 0.6, 0.6, 1.0)
        bsdf.inputs["Roughness"].default_value = 0.45
        harness.stage([obj], size_px=size, samples=samples)
        with tempfile.TemporaryDirectory() as tmp:
            pictures.append(harness.render_png(Path(tmp) / "render.png", [obj]))
    grey = lambda rgba: (rgba[..., :3] * (rgba[..., 3:] / 255.0) + 235 * (1 - rgba[..., 3:] / 255.0))  # noqa: E731
    gap = np.full((size, 8, 3), 255.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([grey(pictures[0]), gap, grey(pictures[1])], axis=1).round().astype(np.uint8)).save(out)
    print(f"wrote {out} (left: without the map, right: with it)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="*", default=["sphere", "torus", "cube"], choices=sorted(world.SHAPES))
    parser.add_argument("--checkpoint", type=Path, help="a trained run (folder or checkpoint.pt) to measure too")
    parser.add_argument("--truth", choices=sorted(world.SHAPES), help="the shape the checkpoint was trained on")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--faces", type=int, default=5000)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--render", type=Path, help="write a Cycles picture of the first case, without | with")
    parser.add_argument("--render-size", type=int, default=320)
    parser.add_argument("--render-samples", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [measure(name, ShapeField(world.SHAPES[name]), world.SHAPES[name], OUT / f"normal_map_{name}", args)
            for name in args.objects]
    if args.checkpoint:
        from backend.checkpoint import load_checkpoint, load_model
        from backend.export import settings_of

        model, config = load_model(args.checkpoint)
        step = load_checkpoint(args.checkpoint, map_location="cpu")["step"]
        settings = settings_of(config)
        rows.append(measure(f"{config.prompt} (trained, step {step} of {config.steps})", model, world.SHAPES[args.truth],
                            OUT / "normal_map_checkpoint", args, settings["threshold"], settings["smooth"]))
    for row in rows:
        print(json.dumps(row))
    (OUT / "normal_map.json").write_text(json.dumps(rows, indent=1))
    if args.render:
        render_side_by_side(Path(rows[0]["glb"]), args.render, args.render_size, args.render_samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
