"""Texture mode on this machine (docs/selection.md, "Texture mode"): ray casting speed, texture error on
the exact shapes prior's true meshes, every method, and the cost of a texture step against the NeRF's.

    python bench/bench_texture.py raycast              # rays/s at 128x128: the 12-triangle cube, a ~100k-face sphere
    python bench/bench_texture.py quality              # true cube "a red cube", striped cylinder, checkered cube
    python bench/bench_texture.py methods              # "a red cube" with sds, nfsd, sdi, fsd
    python bench/bench_texture.py speed                # step time: texture mode vs the NeRF's draft step, 64 and 128 px

Each writes bench/results/texture_<part>.json. The quality runs use the draft preset at 64 px (2^16 hash
table), 400 steps, fit none (the true mesh sits where the prior's object is) and a 512 px texture; the
error is the baked texture's mean absolute RGB error against the object's albedo at 8192 points uniform
on the mesh (backend/texture/truth.py), all of them and those a training camera sees.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.cameras import sample_cameras  # noqa: E402
from backend.config import with_preset  # noqa: E402
from backend.export.frames import to_gltf  # noqa: E402
from backend.texture.raycast import MeshRaycaster  # noqa: E402
from backend.texture.train_texture import train_texture  # noqa: E402
from backend.texture.truth import catalog_trimesh  # noqa: E402
from backend.train import train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
QUALITY = [("cube", "a red cube", 0.03), ("cylinder", "a red striped cylinder", 0.05),
           ("cube", "a blue checkered cube", 0.05)]
METHODS = ("sds", "nfsd", "sdi", "fsd")


def bench_raycast(repeats: int = 20) -> dict:
    cameras = sample_cameras(1, 128, 128, torch.Generator().manual_seed(0))
    origins, dirs = (t.reshape(-1, 3) for t in cameras.rays())
    meshes = {"cube": catalog_trimesh("cube"),
              "sphere_100k": trimesh.creation.icosphere(subdivisions=7, radius=0.5).simplify_quadric_decimation(
                  face_count=100_000)}
    out = {}
    for name, mesh in meshes.items():
        start = time.perf_counter()
        caster = MeshRaycaster(mesh.vertices, mesh.faces)
        build = time.perf_counter() - start
        caster.hits(cameras)                                  # first launch: loads (or compiles) the kernel
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            caster.cast(origins, dirs)
            times.append(time.perf_counter() - start)
        hits_s = min(_timed(lambda: caster.hits(cameras)) for _ in range(repeats))
        out[name] = {"faces": len(mesh.faces), "bvh_build_s": round(build, 4), "cast_s": round(min(times), 5),
                     "mrays_per_s": round(len(origins) / min(times) / 1e6, 3), "hits_with_normals_s": round(hits_s, 5)}
        print(name, out[name], flush=True)
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def mesh_file(shape: str, folder: Path) -> Path:
    """The true shape written as a .glb (glTF frame), as an artist's file would be."""
    mesh = catalog_trimesh(shape)
    path = folder / f"{shape}.glb"
    trimesh.Trimesh(to_gltf(np.asarray(mesh.vertices)), mesh.faces, process=False).export(path)
    return path


def texture_run(shape: str, prompt: str, folder: Path, steps: int, **settings) -> dict:
    config = with_preset("draft", prompt=prompt, source="texture", source_mesh=str(mesh_file(shape, folder)),
                         fit="none", steps=steps, preview_every=0, checkpoint_every=0,
                         **{"resolution": 64, **settings})  # 64 px: the draft's size when these were measured
    start = time.perf_counter()
    report = train_texture(config, folder / f"{shape}_{prompt.replace(' ', '_')}_{config.method}").report
    return {"shape": shape, "prompt": prompt, "method": config.method, "steps": steps,
            "seconds": round(time.perf_counter() - start, 1), "median_step_s": report["median_step_s"],
            **report["ground_truth"]}


def bench_quality(steps: int, folder: Path) -> list:
    rows = []
    for shape, prompt, target in QUALITY:
        rows.append({**texture_run(shape, prompt, folder, steps), "target": target})
        print(rows[-1], flush=True)
    return rows


def bench_methods(steps: int, folder: Path) -> list:
    rows = []
    for method in METHODS:
        rows.append(texture_run("cube", "a red cube", folder, steps, method=method))
        print(rows[-1], flush=True)
    return rows


def bench_speed(steps: int, folder: Path) -> list:
    """Median step time and its split (render = render + encode; prior = the method's prior calls;
    backward = loss, backward and Adam) for the NeRF's draft step and texture mode, at 64 and 128 px."""
    rows = []
    for resolution in (64, 128):
        common = dict(prompt="a red cube", steps=steps, resolution=resolution, coarse_fraction=0.0, preview_every=0,
                      checkpoint_every=0)  # every step at this size
        nerf = train(with_preset("draft", export_mesh=False, **common), folder / f"nerf_{resolution}").report
        texture = train_texture(with_preset("draft", source="texture", source_mesh=str(mesh_file("cube", folder)),
                                            fit="none", texture_size=64, **common),
                                folder / f"texture_{resolution}").report
        for mode, report in (("nerf", nerf), ("texture", texture)):
            rows.append({"mode": mode, "resolution": resolution, "median_step_s": report["median_step_s"],
                         **{k: round(v, 4) for k, v in report["median_breakdown_s"].items()}})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["raycast", "quality", "methods", "speed"])
    parser.add_argument("--steps", type=int, help="training steps (default 400; speed: 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.part == "raycast":
            result = bench_raycast()
        elif args.part == "speed":
            result = bench_speed(args.steps or 30, folder)
        else:
            run = bench_quality if args.part == "quality" else bench_methods
            result = run(args.steps or 400, folder)
    summary = {"part": args.part, "torch_threads": args.threads, "results": result}
    if isinstance(result, list) and result and "median_step_s" in result[0]:
        summary["median_step_s"] = statistics.median(r["median_step_s"] for r in result)
    path = RESULTS / f"texture_{args.part}.json"
    path.write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
