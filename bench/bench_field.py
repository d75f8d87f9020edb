"""The field's forward + backward (hash encoding with its Jacobian, both MLP heads, a loss on density,
albedo and normals) with the PyTorch reference encoding vs the compiled one (backend/nerf/compiled.py),
timed in the same process. Compile time is reported apart.

    python bench/bench_field.py --device cuda --samples 200000
    python bench/bench_field.py --device cpu --samples 100000 --threads 1 --json bench/results/field_cpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.nerf import NeRFSettings  # noqa: E402
from backend.nerf.compiled import CompiledHashGrid  # noqa: E402
from backend.nerf.encoding import TorchHashGrid  # noqa: E402
from backend.nerf.field import RadianceField  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=200000, help="points per field call")
    parser.add_argument("--levels", type=int, default=16, help="active hash levels")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-compile", action="store_true", help="run the compiled field's source eagerly "
                        "(a quick check of this script; --cpu-smoke of gpu_check.sh)")
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def timed(fn, device, repeat):
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = NeRFSettings()
    torch.manual_seed(0)
    fields = {}
    for name, encoding in (("reference", TorchHashGrid(settings)), ("compiled", CompiledHashGrid(settings, compile=not args.no_compile))):
        field = RadianceField(settings)
        field.encoding = encoding
        if fields:
            field.load_state_dict(fields["reference"].state_dict())
        fields[name] = field.to(device)
        field.set_active_levels(args.levels)
    points = torch.rand(args.samples, 3, device=device) * 1.6 - 0.8
    weight = torch.rand(args.samples, 3, device=device)

    def step(field):
        out = field(points)
        (out.density.sum() + out.albedo.sum() + (out.normal ** 2 * weight).sum()).backward()

    start = time.perf_counter()
    step(fields["compiled"])
    step(fields["compiled"])
    compile_s = time.perf_counter() - start
    step(fields["reference"])
    rows = {name: [] for name in fields}
    for _ in range(2):  # alternate, so drift in a busy machine hits both
        for name, field in fields.items():
            rows[name].append(timed(lambda: step(field), device, args.repeat))
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "samples": args.samples, "levels": args.levels,
              "threads": torch.get_num_threads(), "compile_s": compile_s,
              "compiled": not args.no_compile,
              "compile_failed": getattr(fields["compiled"].encoding._encode, "failed", None),
              "median_ms": {name: min(v) for name, v in rows.items()}}
    report["speedup_compiled"] = report["median_ms"]["reference"] / report["median_ms"]["compiled"]
    print(json.dumps(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
