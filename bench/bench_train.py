"""Training benchmarks on the built-in exact prior (CPU), printed as tables and saved as JSON + PNG.

    python bench/bench_train.py speed                 # median step time and its breakdown, +/- occupancy grid
    python bench/bench_train.py quality               # IoU / albedo error per method on 5 catalog objects, the draft's steps
    python bench/bench_train.py reexport              # export those runs' checkpoints again with this code
    python bench/bench_train.py mesh_quality          # the table of those runs (all methods), with mesh IoU,
                                                      # Chamfer, texture error and the surface of their meshes
    python bench/bench_train.py diversity             # distinct colours reached for "a sphere" over 8 seeds
    python bench/bench_train.py guidance              # "a red cube" at guidance 100 / 7.5 / 1: the cause of
                                                      # the old gap (docs/quality.md, "Guidance")
    python bench/bench_train.py surface --folders DIR [DIR ...] [--prompt "a red cube"]
    python bench/bench_train.py orientation --objects "a red cube"
                                                      # the orientation penalty's ramp over a short run
                                                      # the surface measures of exported meshes (mesh.glb)
                                                      # against the truth (docs/quality.md, "Surface")

Numbers are measured, never asserted: machines are noisy. Results go to bench/out/. On 2 cores, two
processes with --threads 1 and disjoint --methods finish about 1.5x sooner than one; each writes its
own JSON (train_quality_sds-fsd.json), and `mesh_quality` then tabulates every run found.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.config import with_preset
from backend.checkpoint import load_model
from backend.metrics import field_color
from backend.pictures import grid, save_png
from backend.runtime import tune_allocator
from backend.train import train
from shared.schema import PRESETS

OUT = Path(__file__).resolve().parent / "out"
METHODS = ("sds", "nfsd", "sdi", "fsd")
OBJECTS = ("a red cube", "a blue sphere", "a yellow cylinder", "a green cone", "a purple torus")


def run(prompt: str, method: str, steps: int, out: Path, **overrides):
    config = with_preset("draft", prompt=prompt, method=method, steps=steps, preview_every=0,
                         checkpoint_every=0, **overrides)
    return train(config, out)


def speed(args) -> dict:
    """The demo settings' step time and its breakdown. (Rendering with and without the occupancy
    grid is compared by bench/bench_render.py, which can switch the grid off.)"""
    report = run("a red cube", "sds", args.steps, OUT / "speed", export_mesh=False).report
    row = {"median_step_s": report["median_step_s"], **report["median_breakdown_s"],
           "projected_1000_steps_min": report["median_step_s"] * 1000 / 60}
    print(f"\nStep time at the demo settings (the draft preset, {args.steps} steps, {torch.get_num_threads()} threads)")
    print(f"{'step s':>8s} {'render':>8s} {'prior':>8s} {'backward':>9s} {'1000 steps':>11s}")
    print(f"{row['median_step_s']:8.3f} {row['render']:8.3f} {row['prior']:8.3f} {row['backward']:9.3f} "
          f"{row['projected_1000_steps_min']:9.1f} min")
    return row


def quality(args) -> dict:
    rows, pictures, labels = {}, [], []
    for prompt in args.objects:
        for method in args.methods:
            start = time.perf_counter()
            result = run(prompt, method, args.steps, OUT / f"quality_{method}_{prompt.replace(' ', '_')}",
                         mesh_resolution=128, texture_size=256)
            truth = result.report["ground_truth"]
            rows[f"{method} | {prompt}"] = {"volume_iou": truth["volume_iou"], "albedo_error": truth["albedo_error"],
                                            "export": {k: result.report["export"].get(k)
                                                       for k in ("faces", "error", "level")},
                                            "surface": truth.get("surface"), "seconds": time.perf_counter() - start}
            pictures.append(np.asarray(Image.open(result.outputs["turntable.png"]))[: args.tile, : args.tile])
            labels.append(f"{method}: {prompt[2:]}")
            print(f"{method:5s} {prompt:20s} IoU {truth['volume_iou']:.3f}  albedo err {truth['albedo_error']:.3f}  "
                  + surface_line(truth.get("surface")), flush=True)
    save_png(grid(pictures, labels, columns=len(args.methods)), OUT / "quality_grid.png")
    print("\nmethod  " + "  ".join(f"{p[2:]:>16s}" for p in args.objects) + "   mean IoU")
    for method in args.methods:
        ious = [rows[f"{method} | {p}"]["volume_iou"] for p in args.objects]
        print(f"{method:6s}  " + "  ".join(f"{i:16.3f}" for i in ious) + f"   {statistics.mean(ious):.3f}")
    return rows


def mesh_quality(args) -> dict:
    """Mesh IoU, Chamfer distance and baked-texture error of the meshes `quality` exported (or
    `reexport` wrote since), and their surface against the exact object (backend.metrics.surface_metrics)."""
    from bench_export import accuracy  # the same measures the export benchmark uses

    from backend.export.readback import load_asset
    from backend.metrics import surface_metrics
    from backend.priors.shapes_world import parse_prompt

    rows, pictures, labels = {}, [], []
    print(f"\n{'method':6s} {'object':20s} {'field IoU':>9s} {'albedo':>7s} {'mesh IoU':>9s} {'Chamfer':>8s} "
          f"{'tex err':>8s} {'level':>6s} {'F@0.01':>6s} {'offset':>7s} {'acc':>6s} {'normals':>7s} {'flat':>5s} "
          f"{'-z flat':>7s} {'bottom':>7s}")
    for prompt in args.objects:
        for method in args.methods:
            folder = OUT / f"quality_{method}_{prompt.replace(' ', '_')}"
            if not (folder / "mesh.glb").exists():
                continue
            report = json.loads((folder / "report.json").read_text())
            export = json.loads((folder / "export.json").read_text()) if (folder / "export.json").exists() \
                else report["export"]     # `reexport` wrote the mesh after the run
            truth, obj, mesh = report["ground_truth"], parse_prompt(prompt)[0], load_asset(folder / "mesh.glb")
            surface = surface_metrics(mesh.vertices, mesh.faces, obj)
            row = {**accuracy(obj, mesh), "field_iou": truth["volume_iou"], "albedo_error": truth["albedo_error"],
                   "level": export["threshold"], "cavity_nodes_filled": export.get("cavity_nodes_filled"),
                   "surface": surface}
            rows[f"{method} | {prompt}"] = row
            pictures.append(np.asarray(Image.open(folder / "turntable.png"))[: args.tile, : args.tile])
            labels.append(f"{method}: {prompt[2:]}")
            z_flat = surface["faces"]["-z"]["flat_share"] if "faces" in surface else float("nan")
            print(f"{method:6s} {prompt:20s} {row['field_iou']:9.3f} {row['albedo_error']:7.3f} {row['iou']:9.3f} "
                  f"{row['chamfer']:8.4f} {row['tex_err']:8.3f} {row['level']:6.2f} {surface['fscore']:6.3f} "
                  f"{surface['offset']:+7.4f} {surface['accuracy']:6.4f} {surface['normal_error_mean']:7.2f} "
                  f"{surface.get('flat_share', surface['within_5deg']):5.3f} {z_flat:7.3f} "
                  f"{surface['regions']['bottom']['offset']:+7.4f}", flush=True)
    if pictures:
        save_png(grid(pictures, labels, columns=len(args.methods)), OUT / "quality_grid.png")
    print(f"\n{'method':6s} {'mean field IoU':>14s} {'min':>6s} {'mean albedo err':>15s} {'mean mesh IoU':>13s} "
          f"{'mean tex err':>12s} {'mean F':>6s} {'min F':>6s} {'mean |offset|':>13s} {'mean normals':>12s}")
    for method in args.methods:
        mine = [row for key, row in rows.items() if key.startswith(f"{method} |")]
        if mine:
            mean = lambda key: statistics.mean(key(r) for r in mine)  # noqa: E731
            print(f"{method:6s} {mean(lambda r: r['field_iou']):14.3f} {min(r['field_iou'] for r in mine):6.3f} "
                  f"{mean(lambda r: r['albedo_error']):15.3f} {mean(lambda r: r['iou']):13.3f} "
                  f"{mean(lambda r: r['tex_err']):12.3f} {mean(lambda r: r['surface']['fscore']):6.3f} "
                  f"{min(r['surface']['fscore'] for r in mine):6.3f} "
                  f"{mean(lambda r: abs(r['surface']['offset'])):13.4f} "
                  f"{mean(lambda r: r['surface']['normal_error_mean']):12.2f}")
    return rows


def reexport(args) -> dict:
    """Export each `quality` run's checkpoint again, in place, with the run's own settings and this
    code's export (docs/export.md), writing the export's stats to export.json for `mesh_quality`."""
    from backend.export import export_mesh, settings_of

    rows = {}
    for prompt in args.objects:
        for method in args.methods:
            folder = OUT / f"quality_{method}_{prompt.replace(' ', '_')}"
            if not (folder / "checkpoint.pt").exists():
                continue
            model, config = load_model(folder / "checkpoint.pt")
            stats = export_mesh(model, folder, **settings_of(config)).stats
            (folder / "export.json").write_text(json.dumps(stats, indent=1))
            rows[f"{method} | {prompt}"] = stats
            print(f"{method:5s} {prompt:20s} level {stats['threshold']:6.2f}  faces {stats['faces']:6d}  cavity nodes "
                  f"filled {stats['cavity_nodes_filled']:6d}  {stats['total_seconds']:.1f} s", flush=True)
    return rows


SURFACE_HEADER = (f"{'acc':>7s} {'comp':>7s} {'F@0.01':>6s} {'normal':>6s} {'median':>6s} {'flat':>5s} "
                  f"{'bottom off':>10s} {'std':>6s} {'z min':>6s} {'mesh IoU':>8s}")


def surface_line(m: dict | None) -> str:
    """One row of surface measures (backend.metrics.surface_metrics), under SURFACE_HEADER."""
    if not m:
        return "(no mesh)"
    bottom = m["regions"]["bottom"]
    flat = m.get("flat_share", m["within_5deg"])
    return (f"{m['accuracy']:7.4f} {m['completeness']:7.4f} {m['fscore']:6.3f} {m['normal_error_mean']:6.2f} "
            f"{m['normal_error_median']:6.2f} {flat:5.2f} {bottom.get('offset', float('nan')):10.4f} "
            f"{bottom.get('offset_std', float('nan')):6.4f} {m['z_min']:6.3f} {m['volume_iou']:8.3f}")


def surface(args) -> dict:
    """The surface measures of exported meshes: each folder's mesh.glb against the object its run's
    prompt names (report.json), or --prompt's."""
    from backend.export.readback import load_asset
    from backend.metrics import surface_metrics
    from backend.priors.shapes_world import parse_prompt

    rows = {}
    print(f"{'folder':28s} {'level':>7s} " + SURFACE_HEADER)
    for folder in map(Path, args.folders):
        report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").exists() else {}
        prompt = args.prompt or report["settings"]["prompt"]
        mesh = load_asset(folder / "mesh.glb")
        rows[str(folder)] = m = surface_metrics(mesh.vertices, mesh.faces, parse_prompt(prompt)[0])
        level = report.get("export", {}).get("threshold", float("nan"))
        print(f"{folder.name[-28:]:28s} {level:7.2f} " + surface_line(m), flush=True)
    return rows


def orientation(args) -> dict:
    """A training-side candidate for flat faces (docs/quality.md, "Flat faces, sharp edges"): the
    orientation penalty ramped over the run itself (orientation_ramp_steps = --steps, so a draft run
    reaches lambda_orientation_end) against the default ramp over 5000 steps; the exported meshes'
    surface measures side by side."""
    rows = {}
    print(f"{'run':36s} " + SURFACE_HEADER)
    for prompt in args.objects:
        for ramp in (None, args.steps):
            name = f"{prompt} ramp {ramp or 'default'}"
            extra = {} if ramp is None else {"orientation_ramp_steps": ramp}
            folder = OUT / f"orientation_{prompt.replace(' ', '_')}_{ramp or 0}"
            result = run(prompt, "sds", args.steps, folder, **extra)
            rows[name] = m = result.report.get("ground_truth", {}).get("surface")
            print(f"{name[-36:]:36s} " + surface_line(m), flush=True)
    return rows


def diversity(args) -> dict:
    rows = {}
    for method in args.methods:
        colors = []
        for seed in range(args.seeds):
            result = run("a sphere", method, args.steps, OUT / f"diversity_{method}_{seed}", seed=seed,
                         export_mesh=False)
            model, _ = load_model(result.outputs["checkpoint.pt"])
            colors.append(field_color(model.density, model.albedo, result.report['settings']['mesh_threshold']))
        rows[method] = {"colors": colors, "distinct": len({c for c in colors if c is not None})}
        print(f"{method:5s} colours over {args.seeds} seeds: {colors} -> {rows[method]['distinct']} distinct", flush=True)
    return rows


def guidance(args) -> dict:
    """"a red cube" with SDS at its authors' scale, at 7.5 and at the shapes prior's 1, then every
    other method at 1; with the occupancy against the truth and the mean albedo on the true surface."""
    from backend.metrics import evaluate, grid_points, occupancy, surface_points
    from backend.priors.shapes_world import CatalogObject

    cube = CatalogObject("cube", "red")
    runs = [("sds", 100.0), ("sds", 7.5), ("sds", 1.0)] + [(m, 1.0) for m in args.methods if m != "sds"]
    rows = {}
    print(f"{'method':6s} {'cfg':>5s} {'IoU':>6s} {'albedo err':>10s} {'occupied':>8s} {'true':>6s} {'over':>6s} "
          f"{'under':>6s}  mean albedo (true 0.85 0.10 0.10)")
    for method, scale in runs:
        result = run("a red cube", method, args.steps, OUT / f"guidance_{method}_{scale:g}", cfg=scale,
                     export_mesh=False)
        model, _ = load_model(result.outputs["checkpoint.pt"])
        occupied = occupancy(model.density, result.report["settings"]["mesh_threshold"])
        inside = evaluate(cube.sdf, grid_points(64)) < 0
        albedo = evaluate(model.albedo, surface_points(cube, 4096)).mean(0).tolist()
        truth = result.report["ground_truth"]
        rows[f"{method} | {scale:g}"] = row = {
            "volume_iou": truth["volume_iou"], "albedo_error": truth["albedo_error"],
            "occupied": int(occupied.sum()), "true": int(inside.sum()), "over": int((occupied & ~inside).sum()),
            "under": int((~occupied & inside).sum()), "mean_albedo": albedo}
        print(f"{method:6s} {scale:5g} {row['volume_iou']:6.3f} {row['albedo_error']:10.3f} {row['occupied']:8d} "
              f"{row['true']:6d} {row['over']:6d} {row['under']:6d}  " + " ".join(f"{c:.2f}" for c in albedo),
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("speed", "quality", "reexport", "mesh_quality", "diversity", "guidance",
                                         "surface", "orientation", "all"),
                        nargs="?", default="all")
    parser.add_argument("--steps", type=int, default=PRESETS["draft"].settings["steps"],
                        help="the draft preset's (and the demo's) by default")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--objects", nargs="+", default=list(OBJECTS))
    parser.add_argument("--tile", type=int, default=256, help="pixels of each turntable shown in the grid (a view is 256)")
    parser.add_argument("--folders", nargs="+", default=[], help="surface: run or export folders with a mesh.glb")
    parser.add_argument("--prompt", help="surface: the object, when a folder has no report.json")
    parser.add_argument("--elevation", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="training cameras' elevation range in degrees (default: backend/cameras.py's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when running two benches at once)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.elevation:   # an experiment: sample_cameras reads the range when it is called
        import backend.cameras
        backend.cameras.ELEVATION_RANGE_DEG = tuple(args.elevation)
    tune_allocator()
    OUT.mkdir(parents=True, exist_ok=True)
    results = {}
    suffix = "" if args.methods == list(METHODS) else "_" + "-".join(args.methods)
    for what, fn in (("speed", speed), ("quality", quality), ("reexport", reexport), ("mesh_quality", mesh_quality),
                     ("diversity", diversity), ("guidance", guidance), ("surface", surface),
                     ("orientation", orientation)):
        if args.what == what or (args.what == "all" and what not in ("reexport", "surface", "orientation")):
            results[what] = fn(args)
            (OUT / f"train_{what}{suffix}.json").write_text(json.dumps(results[what], indent=1, default=str))


if __name__ == "__main__":
    main()
