"""What a run does after its last step: the turntable picture, the mesh export and report.json."""
from __future__ import annotations

import json
import platform
import resource
import statistics
from pathlib import Path

import torch

from shared.results import CHECKPOINT, MESH, REPORT, TURNTABLE
from shared.version import __version__
from .cameras import turntable_cameras
from .config import GenerateConfig
from .errors import UserError
from .events import EventCallback, Log
from .fileio import write_atomic
from .nerf import NeRFModel
from .pictures import grid, save_png
from .priors import Prior

TURNTABLE_VIEWS = 8
TURNTABLE_SIZE = 256  # pixels per view side: large enough to judge the surface


def turntable_size(render_resolution: int) -> int:
    """256 px views for runs rendered at 64 px or more (the draft preset up); 4x the render size below
    that, so the tiny preset's quick runs (and the tests) do not spend most of their time on pictures."""
    return min(TURNTABLE_SIZE, 4 * render_resolution)


@torch.no_grad()
def render_views(model: NeRFModel, n: int, resolution: int, device: torch.device, shading: str = "lambertian"):
    """n turntable views [n, H, W, 3], lit from the camera side."""
    cams = turntable_cameras(n, resolution, resolution, device=device)
    was_training = model.training
    model.eval()  # no sample jitter in pictures
    views = torch.cat([model.render(cams[i:i + 1], shading, cams.positions[i:i + 1] * 1.5).rgb for i in range(n)])
    model.train(was_training)
    return views


def finish(config: GenerateConfig, model: NeRFModel, prior: Prior, out_dir: Path, device: torch.device,
           timings: dict, elapsed: float, steps_done: int, on_event: EventCallback) -> tuple[dict[str, Path], dict]:
    """Turntable, mesh and report of a finished run: (the files written by name, the report)."""
    model.eval()
    views = render_views(model, TURNTABLE_VIEWS, turntable_size(config.resolution), device)
    outputs: dict[str, Path] = {TURNTABLE: save_turntable(views, out_dir)}
    export_stats: dict = {}
    if config.export_mesh:
        from .export import export_mesh, settings_of
        try:
            exported = export_mesh(model, out_dir, **settings_of(config))
            outputs.update(exported.paths)
            export_stats = exported.stats
        except UserError as error:  # keep the run's other results; the mesh can be re-exported later
            export_stats = {"error": str(error)}
            on_event(Log("warning", f"mesh export failed: {error} Re-export with: python -m backend export "
                                    f"{out_dir / CHECKPOINT} --threshold LOWER"))
    report = build_report(config, prior, model, device, timings, elapsed, steps_done, export_stats,
                          outputs.get(MESH))
    outputs[REPORT] = write_report(report, out_dir)
    return outputs, report


def save_turntable(views: torch.Tensor, out_dir: Path) -> Path:
    """The TURNTABLE_VIEWS views [n, H, W, 3] as one grid picture, two rows (turntable.png)."""
    return save_png(grid(list(views), columns=TURNTABLE_VIEWS // 2), out_dir / TURNTABLE)


def write_report(report: dict, out_dir: Path) -> Path:
    """report.json, written atomically (values JSON cannot hold, as their str)."""
    return write_atomic(out_dir / REPORT, json.dumps(report, indent=2, default=str))


def peak_memory_mb(device: torch.device) -> dict:
    peak = {"cpu_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def build_report(config, prior, model, device, timings, elapsed, steps_done, export_stats, mesh_path=None) -> dict:
    median = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    report = {
        "settings": config.to_dict(),
        "versions": {"distill3d": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "prior": prior.describe(),
        "steps_done": steps_done,
        "total_time_s": elapsed,
        "median_step_s": median(timings["step"]),
        "median_breakdown_s": {k: median(v) for k, v in timings.items() if k != "step"},
        "peak_memory": peak_memory_mb(device),
        "export": export_stats,
    }
    if hasattr(prior, "ground_truth"):
        level = export_stats.get("threshold", config.mesh_threshold)   # the exported mesh's level
        report["ground_truth"] = ground_truth_metrics(model, prior.ground_truth(), level, mesh_path)
    return report


@torch.no_grad()
def ground_truth_metrics(model: NeRFModel, objects, threshold: float | None, mesh_path: Path | None = None) -> dict:
    """For the exact prior: volume IoU of the field's occupancy at the surface level against the
    best-matching prompt object, the albedo error on that object's surface, and with the exported
    mesh, its surface measures (metrics.surface_metrics: accuracy, completeness, F-score, normals).
    threshold None: the level the export would choose (export.level.surface_level)."""
    from .export.level import surface_level
    from .export.extract import DEFAULT_THRESHOLD
    from .metrics import albedo_error, best_match, surface_metrics

    if threshold is None:
        try:
            threshold = surface_level(model).level
        except UserError:  # nothing opaque yet (an untrained field): any level reads as empty
            threshold = DEFAULT_THRESHOLD
    device = next(model.parameters()).device
    density = lambda p: model.density(p.to(device))  # noqa: E731  (the metrics work on the CPU)
    albedo = lambda p: model.albedo(p.to(device))  # noqa: E731
    obj, iou = best_match(density, objects, threshold, 64, albedo_fn=albedo)
    error = albedo_error(albedo, obj)
    result = {"object": obj.name, "volume_iou": float(iou), "albedo_error": float(error), "threshold": threshold,
              "candidates": len(objects)}
    if mesh_path is not None and Path(mesh_path).exists():
        from .export.readback import load_asset
        mesh = load_asset(Path(mesh_path))
        result["surface"] = surface_metrics(mesh.vertices, mesh.faces, obj)
    return result
