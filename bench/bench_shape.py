"""Shape from a mesh on the built-in exact prior (docs/selection.md, "Shape from a mesh"): volume IoU
against the prompt's object every --every steps, from the blob or from a mesh (draft preset, SDS), at
the surface level an export would take at that step (backend/export/level.py, from the renders).

    python bench/bench_shape.py run sphere_cube --seed 0      # a sphere mesh, "a red cube"
    python bench/bench_shape.py run cylinder_blob --seed 0    # "a yellow cylinder" from the blob
    python bench/bench_shape.py run cylinder_shape --seed 0   # ... from a coarse 16-sided cylinder mesh
    python bench/bench_shape.py table                         # the table of every result found
    python bench/bench_shape.py remeasure                     # final IoU again at today's surface level

Each run writes bench/results/shape_<case>_s<seed>.json; run two at once with OMP_NUM_THREADS=1 on 2
cores. The meshes are made here (trimesh) and written as .glb in glTF's frame, read with fit "none" so
they sit where the prior's objects are. Numbers are measured, never asserted.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import backend.train as train_module
from backend.config import with_preset
from backend.events import Progress
from backend.export.frames import to_gltf
from backend.metrics import evaluate, grid_points, occupancy, volume_iou
from backend.priors.shapes_world import SHAPES

ROOT = Path(__file__).resolve().parent
RESULTS, OUT = ROOT / "results", ROOT / "out" / "shape"
CASES = {  # prompt, the object's shape, the starting mesh (None: the blob)
    "sphere_cube": ("a red cube", "cube", "sphere"),
    "cylinder_blob": ("a yellow cylinder", "cylinder", None),
    "cylinder_shape": ("a yellow cylinder", "cylinder", "cylinder16"),
}


def write_mesh(name: str) -> Path:
    """The starting meshes, in the backend world, written in glTF's frame (docs/frames.md)."""
    import trimesh

    made = {"sphere": lambda: trimesh.creation.icosphere(subdivisions=2, radius=0.5),  # 320 faces
            "cylinder16": lambda: trimesh.creation.cylinder(radius=0.4, height=0.8, sections=16)}[name]()
    path = OUT / f"{name}.glb"
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.Trimesh(to_gltf(np.asarray(made.vertices)), made.faces, process=False).export(path)
    return path


class ModelSpy:
    """Keeps the NeRFModel that train() builds, so the IoU can be read at any step without changing train."""

    def __init__(self):
        self.model = None
        original = train_module.NeRFModel
        spy = self

        class Spied(original):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                spy.model = self
        train_module.NeRFModel = Spied


def surface_level_of(model, threshold: float | None) -> float:
    """The level an export would use now: the run's threshold, else the one chosen from the renders."""
    from backend.errors import UserError
    from backend.export.extract import DEFAULT_THRESHOLD
    from backend.export.level import surface_level

    if threshold is not None:
        return threshold
    try:
        return surface_level(model).level
    except UserError:  # nothing opaque yet
        return DEFAULT_THRESHOLD


def run(case: str, seed: int, steps: int, every: int, strength: float | None) -> dict:
    prompt, shape, mesh = CASES[case]
    settings = dict(prompt=prompt, method="sds", seed=seed, steps=steps, preview_every=0, checkpoint_every=0,
                    export_mesh=False)
    if mesh:
        settings.update(source="shape", source_mesh=str(write_mesh(mesh)), fit="none", shape_strength=strength)
    config = with_preset("draft", **settings)
    truth = evaluate(SHAPES[shape], grid_points(64)) < 0
    spy, curve, levels = ModelSpy(), {}, {}

    def measure(step: int) -> None:
        model = spy.model
        was = model.training
        model.eval()
        level = surface_level_of(model, config.mesh_threshold)
        curve[step] = volume_iou(occupancy(model.density, level, 64), truth)
        levels[step] = level
        model.train(was)
        print(f"{case} seed {seed} step {step}: IoU {curve[step]:.3f} at level {level:.1f}", flush=True)

    def on_event(event) -> None:
        if isinstance(event, Progress) and (event.step == 1 or event.step % every == 0):
            measure(0 if event.step == 1 else event.step)  # step 1: the start (one step in)

    start = time.time()
    result = train_module.train(config, OUT / f"{case}_s{seed}", on_event=on_event)
    row = {"case": case, "prompt": prompt, "start": mesh or "blob", "seed": seed, "steps": steps,
           "shape_strength": config.shape_strength if mesh else None, "threshold": config.mesh_threshold,
           "iou": {str(k): v for k, v in sorted(curve.items())},
           "level": {str(k): v for k, v in sorted(levels.items())},
           "steps_to_0.9": next((k for k, v in sorted(curve.items()) if v >= 0.9), None),
           "final_iou": result.report.get("ground_truth", {}).get("volume_iou"),
           "albedo_error": result.report.get("ground_truth", {}).get("albedo_error"),
           "wall_s": time.time() - start, "threads": torch.get_num_threads()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"shape_{case}_s{seed}.json"
    path.write_text(json.dumps(row, indent=1))
    print(json.dumps({k: v for k, v in row.items() if k != "iou"}), f"-> {path}")
    return row


def remeasure() -> None:
    """The last step of every run again, from its checkpoint, at the surface level the export picks now
    (the rule may have changed since the run): adds "final_now" to each result."""
    from backend.checkpoint import load_checkpoint, nerf_settings
    from backend.config import GenerateConfig
    from backend.nerf import NeRFModel

    for path in sorted(RESULTS.glob("shape_*_s*.json")):
        row = json.loads(path.read_text())
        state = load_checkpoint(OUT / f"{row['case']}_s{row['seed']}" / "checkpoint.pt")
        config = GenerateConfig.from_dict(state["config"]).resolved()
        model = NeRFModel(nerf_settings(config))
        weights = {k.replace("shape_bias_settings", "shape_settings"): v for k, v in state["model"].items()}
        model.load_state_dict(weights)  # (the buffer's name in the first runs: shape_bias_settings)
        truth = evaluate(SHAPES[CASES[row["case"]][1]], grid_points(64)) < 0
        level = surface_level_of(model, config.mesh_threshold)
        row["final_now"] = {"level": level, "iou": volume_iou(occupancy(model.density, level, 64), truth)}
        path.write_text(json.dumps(row, indent=1))
        print(row["case"], row["seed"], row["final_now"])


def table() -> None:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("shape_*_s*.json"))]
    steps = [s for s in sorted({int(k) for row in rows for k in row["iou"]}) if s % 100 == 0 or s == 50]
    print("| prompt | start | seed | " + " | ".join(str(s) for s in steps) + " | first step at IoU >= 0.9 |")
    print("|---|---|---|" + "---|" * len(steps) + "---|")
    for row in rows:
        cells = [f"{row['iou'][str(s)]:.3f}" if str(s) in row["iou"] else "" for s in steps]
        print(f"| {row['prompt']} | {row['start']} | {row['seed']} | " + " | ".join(cells)
              + f" | {row['steps_to_0.9']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("case", choices=list(CASES))
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--steps", type=int, default=800)
    one.add_argument("--every", type=int, default=50)
    one.add_argument("--strength", type=float, help="shape_strength (default: the setting's default)")
    sub.add_parser("table")
    sub.add_parser("remeasure", help="the final IoU again, at the export's current surface level")
    args = parser.parse_args()
    if args.command == "table":
        table()
    elif args.command == "remeasure":
        remeasure()
    else:
        run(args.case, args.seed, args.steps, args.every, args.strength)


if __name__ == "__main__":
    main()
