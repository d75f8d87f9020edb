"""Mesh export on this machine: seconds per stage, faces, texture fill, and accuracy against the truth.

The fields are catalog objects of the built-in shapes prior (backend/priors/shapes_world.py) with a
density that crosses the export threshold exactly on their surface, so the exported mesh and texture
can be measured: volume IoU (64^3) and Chamfer distance (4000 points a side, so ~0.013 is the
sampling floor) against the shape, mean |sdf| at points on the mesh (its distance to the true
surface), mean RGB error of the texture read back at random surface points against the object's
albedo (patterns have sharp edges, so a little error is expected there). --nerf adds an untrained hash-grid NeRF (its initial density blob), whose
per-point cost is what a trained model costs. --lattice adds a lattice of thin rods (thinner than
a few grid cells, like a NeRF's thin parts), which quadric decimation squeezes into back-to-back faces
and edges with more than 2 faces: the case the manifold mending is for. Each file is measured for
size (GLB kB), Khronos glTF Validator errors (npm gltf-validator, installed into .cache/ on first use;
"-" without node) and watertightness after merging positions. Each export is rendered to bench/out/export_*.png from
the file it wrote (a small z-buffered software render of the GLB, texture and Lambert shading).

    python bench/bench_export.py                      # sphere + checkered torus at 128^3 and 256^3
    python bench/bench_export.py --resolutions 128 --nerf --lattice
    python bench/bench_export.py smooth [--checkpoints CKPT ...]   # smoothing candidates on the surface
                                                                  # (docs/quality.md, "Flat faces, sharp edges")
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
import trimesh
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend import metrics  # noqa: E402
from backend.export import cleanup  # noqa: E402
from backend.export.extract import marching_cubes  # noqa: E402
from backend.export.level import surface_level  # noqa: E402
from backend.export.smooth import bilateral_smooth  # noqa: E402
from backend.export import export_mesh, mesh_occupancy  # noqa: E402
from backend.export.raster import rasterize_triangles  # noqa: E402
from backend.export.readback import load_asset, texture_color  # noqa: E402
from backend.priors.shapes_world import CatalogObject  # noqa: E402
from tests import gltf_validator  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


class CatalogField:
    """A catalog object as a field: density 100 sigmoid(-sdf / 0.02 - ln 3) is 25 on the surface."""

    def __init__(self, obj: CatalogObject):
        self.obj, self.shape = obj, obj.shape
        self.sdf, self.albedo = obj.sdf, obj.albedo

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return 100.0 * torch.sigmoid(-self.sdf(points) / 0.02 - math.log(3.0))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--objects", nargs="+", default=["orange sphere", "red checkered torus"])
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--faces", type=int, default=50_000)
    parser.add_argument("--nerf", action="store_true", help="also export an untrained NeRF's density blob")
    parser.add_argument("--lattice", action="store_true", help="also export a lattice of thin rods")
    parser.add_argument("--smooth", action="store_true", help="Taubin-smooth before decimating")
    parser.add_argument("--no-render", action="store_true")
    return parser.parse_args(argv)


def accuracy(field: CatalogField, mesh: trimesh.Trimesh) -> dict:
    resolution = 64
    points = metrics.grid_points(resolution)
    inside_mesh = mesh_occupancy(mesh.vertices, mesh.faces, points[:resolution, 2].numpy()).reshape(-1)
    iou = metrics.volume_iou(torch.from_numpy(inside_mesh), metrics.evaluate(field.sdf, points) < 0)
    samples = torch.from_numpy(trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).sample(4000, seed=0)).float()
    chamfer = metrics.chamfer_distance(samples, metrics.surface_points(field, 4000, seed=1))
    distance = field.sdf(samples).abs().mean().item()   # catalog SDFs are exact distances
    rng = np.random.default_rng(0)
    ids, bary = rng.integers(0, len(mesh.faces), 20000), rng.dirichlet(np.ones(3), 20000)
    at = torch.from_numpy(np.einsum("nk,nkd->nd", bary, mesh.vertices[mesh.faces[ids]])).float()
    error = np.abs(texture_color(mesh, ids, bary) - field.albedo(at).numpy()).mean()
    return dict(iou=iou, chamfer=chamfer, distance=distance, tex_err=float(error))


def render(mesh: trimesh.Trimesh, size: int = 512, azimuth: float = 35.0, elevation: float = 20.0) -> np.ndarray:
    """Orthographic, z-buffered render (backend frame: +Z up, azimuth 0 looks at the front from +X)."""
    az, el = math.radians(azimuth), math.radians(elevation)
    toward = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])  # camera dir
    right = np.cross([0.0, 0.0, 1.0], toward)
    right /= np.linalg.norm(right)
    up = np.cross(toward, right)
    v = np.asarray(mesh.vertices)
    screen = np.column_stack([v @ right, -(v @ up)]) * (size / 1.8) + size / 2.0
    depth = -(v @ toward)
    x, y, ids, bary = rasterize_triangles(screen[mesh.faces], size, size)
    frag_depth = np.einsum("nk,nk->n", bary, depth[mesh.faces[ids]])
    pixel = y * size + x
    order = np.lexsort((frag_depth, pixel))
    first = order[np.unique(pixel[order], return_index=True)[1]]     # nearest fragment per pixel
    light = toward + np.array([0.0, 0.0, 0.6])
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(mesh.face_normals[ids[first]] @ light, 0.0, 1.0)
    color = texture_color(mesh, ids[first], bary[first]) * shade[:, None]
    image = np.ones((size * size, 3))
    image[pixel[first]] = color
    return (image.reshape(size, size, 3) * 255).astype(np.uint8)


def run_case(name: str, field, resolution: int, args, measure: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = export_mesh(field, tmp, resolution=resolution, face_budget=args.faces,
                             texture_size=args.texture_size, threshold=getattr(field, "threshold", None),
                             smooth=args.smooth)
        total = time.perf_counter() - start
        mesh = load_asset(result.paths["mesh.glb"])
        row = dict(name=name, res=resolution, total=total, **result.stats)
        row["query_frac"] = result.stats["density_queries"] / resolution ** 3
        row["glb_kb"] = result.paths["mesh.glb"].stat().st_size / 1024
        welded = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
        welded.merge_vertices(merge_tex=True, merge_norm=True)
        row["merged_watertight"] = bool(welded.is_watertight)
        if gltf_validator.unavailable() is None:
            report = gltf_validator.validate(result.paths["mesh.glb"])[0]
            row["gltf_errors"], row["gltf_codes"] = report["errors"], report["codes"]
        if measure:
            row.update(accuracy(field, mesh))
        if not args.no_render:
            OUT.mkdir(parents=True, exist_ok=True)
            path = OUT / f"export_{name.replace(' ', '_')}_{resolution}.png"
            Image.fromarray(render(mesh)).save(path)
            row["picture"] = str(path.relative_to(OUT.parent.parent))
    return row


class LatticeField:
    """Rods along x, y and z every 0.2 (radius 0.015, under a cell at 128^3) inside a ball of 0.7;
    density crosses 25 on the surface, albedo a smooth gradient."""

    def density(self, points: torch.Tensor) -> torch.Tensor:
        rods = []
        for axis in range(3):
            q = points.clone()
            q[:, axis] = 0.0
            rods.append((torch.remainder(q + 0.1, 0.2) - 0.1).norm(dim=-1) - 0.015)
        sdf = torch.maximum(torch.stack(rods).amin(dim=0), points.norm(dim=-1) - 0.7)
        return 100.0 * torch.sigmoid(-sdf / 0.02 - math.log(3.0))

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return 0.5 + 0.4 * torch.tanh(points)


class BlobNeRF:
    """An untrained NeRFModel: its initial density blob is the surface (at threshold 5)."""

    threshold = 5.0

    def __init__(self):
        from backend.nerf import NeRFModel, NeRFSettings
        torch.manual_seed(0)
        self.model = NeRFModel(NeRFSettings())
        self.density, self.albedo = self.model.density, self.model.albedo


SMOOTHERS = {   # the candidates of `smooth`, each on the cleaned marching-cubes mesh
    "raw": lambda mesh: mesh.vertices,
    "taubin (cleanup.smooth)": lambda mesh: cleanup.smooth(mesh).vertices,
    "bilateral (Zheng 2011)": lambda mesh: bilateral_smooth(mesh.vertices, mesh.faces, guided=False),
    "guided (Zhang 2015)": lambda mesh: bilateral_smooth(mesh.vertices, mesh.faces),
    "taubin + guided (export)": lambda mesh: bilateral_smooth(cleanup.smooth(mesh).vertices, mesh.faces),
}


def smooth_meshes(args) -> list[tuple[str, CatalogObject, trimesh.Trimesh]]:
    """The meshes the candidates are tried on: each checkpoint's at its run's level, and the exact
    SDFs on the same grid with and without smooth noise (std 0.003, over about 1.5 cells)."""
    from scipy.ndimage import gaussian_filter

    from backend.checkpoint import load_model
    from backend.export.grid import density_grid, grid_axis
    from backend.priors.shapes_world import parse_prompt

    meshes = []
    for path in map(Path, args.checkpoints):
        model, config = load_model(path)
        report = path.parent / "report.json"
        level = json.loads(report.read_text())["export"]["threshold"] if report.exists() else surface_level(model).level
        grid, _ = density_grid(model, args.resolution, level)
        mesh, _ = cleanup.keep_main_components(cleanup.as_mesh(*marching_cubes(grid, level)))
        meshes.append((f"{config.prompt} (trained)", parse_prompt(config.prompt)[0], mesh))
    axis = grid_axis(args.resolution)
    points = torch.from_numpy(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)).float()
    noise = gaussian_filter(np.random.default_rng(0).standard_normal((args.resolution,) * 3), 1.5)
    for name in args.objects:
        obj = parse_prompt(name)[0]
        for amplitude in (0.0, 0.003):
            grid = (-obj.sdf(points).numpy().reshape((args.resolution,) * 3) + amplitude * noise / noise.std())
            mesh = cleanup.as_mesh(*marching_cubes(grid.astype(np.float32), 0.0))
            meshes.append((f"{name} (exact SDF{', noise 0.003' if amplitude else ''})", obj, mesh))
    return meshes


def smooth_main(argv=None) -> int:
    """Each smoothing candidate on each mesh: the surface measures against the truth and the CPU time."""
    parser = argparse.ArgumentParser(description="smoothing candidates, measured (docs/quality.md)")
    parser.add_argument("--checkpoints", nargs="*", default=["results/demo/checkpoint.pt"])
    parser.add_argument("--objects", nargs="*", default=["red cube", "red sphere", "red torus"])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results"
                        / f"smooth_{time.strftime('%Y-%m-%d')}.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print(f"{'mesh':34s} {'candidate':26s} {'acc':>7s} {'offset':>7s} {'F@0.01':>6s} {'normals':>7s} {'median':>6s} "
          f"{'flat':>5s} {'bottom':>6s} {'sides':>6s} {'-z flat':>7s} {'IoU':>6s} {'cpu s':>6s}")
    for name, obj, mesh in smooth_meshes(args):
        for candidate, smoother in SMOOTHERS.items():
            start = time.process_time()
            vertices = np.asarray(smoother(mesh))
            seconds = time.process_time() - start
            m = metrics.surface_metrics(vertices, mesh.faces, obj)
            rows.append(dict(mesh=name, candidate=candidate, triangles=len(mesh.faces), cpu_seconds=seconds, **m))
            bottom = m["faces"]["-z"]["flat_share"] if "faces" in m else float("nan")
            print(f"{name:34s} {candidate:26s} {m['accuracy']:7.4f} {m['offset']:+7.4f} {m['fscore']:6.3f} "
                  f"{m['normal_error_mean']:7.2f} {m['normal_error_median']:6.2f} "
                  f"{m.get('flat_share', m['within_5deg']):5.3f} {m['regions']['bottom']['normal_error_mean']:6.2f} "
                  f"{m['regions']['sides']['normal_error_mean']:6.2f} {bottom:7.3f} {m['volume_iou']:6.4f} "
                  f"{seconds:6.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["smooth"]:
        return smooth_main(argv[1:])
    args = parse_args(argv)
    from backend.priors.shapes_world import parse_prompt
    rows = []
    for prompt in args.objects:
        field = CatalogField(parse_prompt(prompt)[0])
        for resolution in args.resolutions:
            rows.append(run_case(prompt, field, resolution, args, measure=True))
            print_row(rows[-1], header=len(rows) == 1)
    if args.lattice:
        for resolution in args.resolutions:
            rows.append(run_case("rod lattice", LatticeField(), resolution, args, measure=False))
            print_row(rows[-1], header=not rows[:-1])
    if args.nerf:
        rows.append(run_case("untrained nerf", BlobNeRF(), min(args.resolutions), args, measure=False))
        print_row(rows[-1], header=not rows[:-1])
    print("\nseconds per stage:")
    for row in rows:
        print(f"  {row['name']:>20s} {row['res']:4d}^3  " + "  ".join(f"{k} {v:.2f}" for k, v in row["seconds"].items()))
    for row in rows:
        if row.get("gltf_codes"):
            print(f"  validator errors, {row['name']} {row['res']}^3: {row['gltf_codes']}")
    for row in rows:
        if "picture" in row:
            print(f"  picture: {row['picture']}")
    return 0


def print_row(row: dict, header: bool) -> None:
    if header:
        print(f"{'object':>20s} {'grid':>6s} {'total s':>8s} {'queried':>8s} {'faces':>7s} {'fill':>6s} "
              f"{'charts':>6s} {'IoU':>6s} {'chamfer':>8s} {'|sdf|':>8s} {'tex err':>8s} {'watertight':>10s} "
              f"{'merged wt':>9s} {'GLB kB':>7s} {'glTF err':>8s}")
    def fmt(key: str, spec: str) -> str:
        return format(row[key], spec) if key in row else "-"
    print(f"{row['name']:>20s} {row['res']:>4d}^3 {row['total']:8.2f} {row['query_frac']:8.1%} {row['faces']:7d} "
          f"{row['texture_fill']:6.1%} {row['uv_charts']:6d} {fmt('iou', '6.4f'):>6s} {fmt('chamfer', '8.5f'):>8s} {fmt('distance', '8.5f'):>8s} "
          f"{fmt('tex_err', '8.4f'):>8s} {str(row['watertight']):>10s} {str(row['merged_watertight']):>9s} "
          f"{row['glb_kb']:7.0f} {fmt('gltf_errors', 'd'):>8s}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
