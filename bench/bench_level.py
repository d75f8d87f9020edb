"""The export's surface level on trained checkpoints: the level the rule chooses at several ray
counts (how steady it is), and the surface of the mesh at the default count against the exact
object (docs/export.md, "The surface level").

    python bench/bench_level.py --checkpoints results/demo/checkpoint.pt CONE/checkpoint.pt

The mesh is the export's surface before decimation: 128^3 marching cubes at the level, the main
component, Taubin, then guided normal filtering (backend/export/pipeline.py), measured by
backend.metrics.surface_metrics. Checkpoints of the shapes prior only (the truth is its object).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend import metrics  # noqa: E402
from backend.checkpoint import load_model  # noqa: E402
from backend.export import cleanup  # noqa: E402
from backend.export.extract import marching_cubes  # noqa: E402
from backend.export.grid import density_grid  # noqa: E402
from backend.export.level import LEVEL_RAYS, surface_level  # noqa: E402
from backend.export.smooth import bilateral_smooth  # noqa: E402
from backend.priors.shapes_world import parse_prompt  # noqa: E402


def smoothed_surface(model, level: float, resolution: int = 128):
    """(vertices, faces) of the export's surface at `level`, before decimation."""
    grid, _ = density_grid(model, resolution, level)
    mesh, _ = cleanup.keep_main_components(cleanup.as_mesh(*marching_cubes(grid, level)))
    mesh = cleanup.smooth(mesh)
    return np.asarray(bilateral_smooth(mesh.vertices, mesh.faces)), np.asarray(mesh.faces)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", default=["results/demo/checkpoint.pt"])
    parser.add_argument("--rays", nargs="+", type=int, default=[24, 32, 48, 64])
    parser.add_argument("--levels", nargs="*", type=float, default=[], help="also measure these fixed levels")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "level.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for path in args.checkpoints:
        model, config = load_model(Path(path))
        obj = parse_prompt(config.prompt)[0]
        chosen = {}
        for rays in args.rays:
            start = time.process_time()
            level = surface_level(model, rays=rays)
            chosen[rays] = dict(level=level.level, rule=level.rule, cpu_seconds=time.process_time() - start)
        print(f"{config.prompt} ({path}): level at " + ", ".join(
            f"{rays} rays {c['level']:.2f} ({c['cpu_seconds']:.1f} s)" for rays, c in chosen.items()), flush=True)
        default = surface_level(model).level if LEVEL_RAYS not in chosen else chosen[LEVEL_RAYS]["level"]
        for level in [default, *args.levels]:
            m = metrics.surface_metrics(*smoothed_surface(model, level), obj)
            rows.append(dict(checkpoint=str(path), prompt=config.prompt, level=level, chosen=chosen, surface=m))
            print(f"  level {level:6.2f}: F@0.01 {m['fscore']:.3f}  offset {m['offset']:+.4f}  accuracy "
                  f"{m['accuracy']:.4f}  normals {m['normal_error_mean']:.2f} deg  flat "
                  f"{m.get('flat_share', m['within_5deg']):.3f}  bottom offset {m['regions']['bottom']['offset']:+.4f}",
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
