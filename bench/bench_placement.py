"""Where a trained shapes-prior run puts its object, against the exact one (docs/quality.md, "The cone:
a fraction of a pixel").

    python bench/bench_placement.py [RUN ...]    # run folders with checkpoint.pt and mesh.glb; by default
                                                 # the SDS runs of `bench_train.py quality` found in bench/out

For each run, two measures:
- **shift**: the vertical move of the exported mesh that brings it closest to the exact surface (mean
  |SDF| of 20k surface samples, searched in 0.0005 steps over +-0.015), with the F-score precision
  (share of samples within 0.01) before and after. A mesh of the right shape in the wrong place gains
  a lot; a wrong shape gains little.
- **outline**: for 64 x 64 views from elevations -45..45 and 6 azimuths, the trained field's opacity
  against the exact object's coverage (8 x 8 rays a pixel) over the lower half of the picture, as
  the mean excess per covered column, in pixels: + where the field's lower outline sits below the
  object's, - above.
Printed as tables; JSON to bench/out/placement.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend import metrics  # noqa: E402
from backend.cameras import turntable_cameras  # noqa: E402
from backend.checkpoint import load_model  # noqa: E402
from backend.export.readback import load_asset  # noqa: E402
from backend.priors.shapes import sphere_trace  # noqa: E402
from backend.priors.shapes_world import SHAPE_RADIUS, SHAPES, parse_prompt  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
ELEVATIONS = (-45, -30, -20, -10, 0, 10, 20, 30, 45)
VIEWS = 6                                      # azimuths 0, 60, ... 300 at each elevation
AZIMUTHS = tuple(range(0, 360, 360 // VIEWS))
RESOLUTION, SUPERSAMPLE, DISTANCE = 64, 8, 1.75


def best_shift(obj, mesh_path: Path) -> dict:
    """The vertical shift minimising the mean |SDF| of the mesh's surface samples."""
    mesh = load_asset(mesh_path)
    points = torch.from_numpy(metrics.sample_mesh(mesh.vertices, mesh.faces, 20000)[0]).float()
    rows = []
    for dz in np.arange(-0.015, 0.01501, 0.0005):
        sdf = obj.sdf(points + torch.tensor([0.0, 0.0, float(dz)])).abs()
        rows.append((sdf.mean().item(), float(dz), (sdf < 0.01).float().mean().item()))
    at_zero = min(rows, key=lambda row: abs(row[1]))
    best = min(rows)
    return {"shift_up": round(best[1], 4), "mean_abs_sdf": [at_zero[0], best[0]], "precision": [at_zero[2], best[2]]}


@torch.no_grad()
def outline_excess(model, shape: str) -> list[list[float]]:
    """[elevation][azimuth] mean excess of the field's lower-half opacity per covered column, pixels."""
    lower = slice(RESOLUTION // 2, RESOLUTION)
    table = []
    for elevation in ELEVATIONS:
        cameras = turntable_cameras(VIEWS, RESOLUTION, RESOLUTION, elevation, DISTANCE)
        opacity = model.render(cameras, "albedo", torch.tensor([[0.0, 0.0, 3.0]]).expand(VIEWS, 3)).opacity[..., 0]
        fine = turntable_cameras(VIEWS, RESOLUTION * SUPERSAMPLE, RESOLUTION * SUPERSAMPLE, elevation, DISTANCE)
        origins, dirs = (t.reshape(-1, 3) for t in fine.rays())
        hit_rays, _ = sphere_trace(SHAPES[shape], origins, dirs, SHAPE_RADIUS[shape])
        hits = torch.zeros(origins.shape[0]).index_fill_(0, hit_rays, 1.0)
        coverage = hits.view(VIEWS, RESOLUTION, SUPERSAMPLE, RESOLUTION, SUPERSAMPLE).mean((2, 4))
        columns = (coverage[:, lower].sum(1) > 0).sum(1).clamp(min=1)
        table.append(((opacity[:, lower].sum((1, 2)) - coverage[:, lower].sum((1, 2))) / columns).tolist())
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path)
    args = parser.parse_args()
    runs = args.runs or [folder for folder in sorted(OUT.glob("quality_sds_*")) if (folder / "mesh.glb").exists()]
    if not runs:
        sys.exit("no runs: give run folders, or make them with `python bench/bench_train.py quality --methods sds`")
    torch.set_num_threads(1)
    results = {}
    for run in runs:
        model, config = load_model(run / "checkpoint.pt")
        obj = parse_prompt(config.prompt)[0]
        shift = best_shift(obj, run / "mesh.glb")
        table = outline_excess(model, obj.shape)
        results[str(run)] = {"prompt": config.prompt, **shift, "outline_excess_px": table,
                             "elevations": ELEVATIONS, "azimuths": AZIMUTHS}
        print(f"\n{run}: {config.prompt}; best shift up {shift['shift_up']:+.4f}, mean |SDF| "
              f"{shift['mean_abs_sdf'][0]:.4f} -> {shift['mean_abs_sdf'][1]:.4f}, precision at 0.01 "
              f"{shift['precision'][0]:.3f} -> {shift['precision'][1]:.3f}")
        print("lower outline, field minus object, px (+: the field's lies lower)")
        print("elevation " + " ".join(f"{a:>6d}" for a in AZIMUTHS) + "   mean")
        for elevation, row in zip(ELEVATIONS, table):
            print(f"{elevation:+9d} " + " ".join(f"{v:+6.2f}" for v in row) + f" {np.mean(row):+6.2f}")
    OUT.mkdir(exist_ok=True)
    (OUT / "placement.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
