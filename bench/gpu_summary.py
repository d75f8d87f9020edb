"""Gather what bench/gpu_check.sh measured into one JSON and print the table, targets beside figures.

    python bench/gpu_summary.py WORK_DIR OUT_DIR

WORK_DIR holds stages.jsonl (one {"stage", "rc", "seconds"} per stage), bench_sd.json, bench_field.json
and the report.json of the CLI runs under cli/ and demo/; whatever is missing is reported as missing.
"""
from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path

# (name, what it is read from, target, True when higher is better); the targets of docs/gpu.md.
TARGETS = {
    "whole SDS step, it/s (bench, NeRF)": (20.0, True),
    "whole SDS step, it/s (CLI, SD folder)": (20.0, True),
    "prior side SDS / plain speed-up": (1.5, True),
    "whole-step SDI / SDS time": (2.0, False),
    "peak VRAM SDS whole step, GB": (6.0, False),
    "shapes demo on CUDA, it/s": (40.0, True),
}


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def row(results: list[dict], render: str, method: str, graphs: bool | None = True) -> dict | None:
    for r in results:
        if r["render"] == render and r["method"] == method and (graphs is None or r["graphs"] == graphs):
            return r
    return None


def figures(work: Path) -> dict:
    """The headline figures (None where the stage did not produce them)."""
    sd = load(work / "bench_sd.json") or {"info": {}, "results": []}
    results, info = sd["results"], sd["info"]
    sds_nerf = row(results, "nerf", "sds") or row(results, "nerf", "sds", None)
    cli, demo = load(work / "cli" / "report.json"), load(work / "demo" / "report.json")
    per_s = lambda report: 1.0 / report["median_step_s"] if report and report.get("median_step_s") else None  # noqa: E731
    return {
        "whole SDS step, it/s (bench, NeRF)": sds_nerf and sds_nerf["steps_per_s"],
        "whole SDS step, it/s (CLI, SD folder)": per_s(cli),
        "prior side SDS / plain speed-up": info.get("image_speedup_sds_over_plain"),
        "whole-step SDI / SDS time": info.get("nerf_sdi_over_sds_time"),
        "peak VRAM SDS whole step, GB": sds_nerf and sds_nerf.get("peak_vram_mb") and sds_nerf["peak_vram_mb"] / 1024,
        "shapes demo on CUDA, it/s": per_s(demo),
        "texture mode on CUDA, it/s": per_s(load(work / "texture" / "report.json")),
    }


def verdict(value, target: float, higher: bool) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= target if higher else value <= target) else "missed"


def _shown(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(report: dict) -> str:
    lines = [f"{'stage':<12} {'rc':>4} {'s':>6}"]
    lines += [f"{s['stage']:<12} {s['rc']:>4} {s['seconds']:>6}" for s in report["stages"]]
    sd = report.get("bench_sd") or {"results": []}
    if sd["results"]:
        lines += ["", f"{'render':<6} {'method':<6} {'graphs':<6} {'ms/step':>9} {'it/s':>7} {'UNet/step':>9} "
                      f"{'VRAM MB':>8}"]
        for r in sd["results"]:
            vram = r.get("peak_vram_mb")
            lines.append(f"{r['render']:<6} {r['method']:<6} {'on' if r['graphs'] else 'off':<6} "
                         f"{r['median_step_ms']:>9.1f} {r['steps_per_s']:>7.2f} {r['unet_calls_per_step']:>9.2f} "
                         f"{'-' if vram is None else f'{vram:.0f}':>8}")
        for c in sd.get("components", []):
            lines.append(f"component {c['component']:<19} graphs {'on ' if c['graphs'] else 'off'} channels-last "
                         f"{c['vae_channels_last']!s:<5} {c['ms']:8.2f} ms")
    field = report.get("bench_field")
    if field:
        lines.append(f"field fwd+bwd ({field['samples']} samples): reference {field['median_ms']['reference']:.1f} ms, "
                     f"compiled {field['median_ms']['compiled']:.1f} ms (compile {field['compile_s']:.0f} s)")
    reported = [name for name in report["figures"] if name not in TARGETS]  # figures with no target yet
    lines += [""] + [f"{name:<40} {_shown(report['figures'][name]):>10}  reported" for name in reported]
    lines += ["", f"{'target':<40} {'measured':>10} {'target':>8}  verdict"]
    for name, (target, higher) in TARGETS.items():
        lines.append(f"{name:<40} {_shown(report['figures'][name]):>10} {('>= ' if higher else '<= ') + str(target):>8}  "
                     f"{report['targets'][name]['verdict']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    work, out = (Path(a) for a in (argv or sys.argv[1:]))
    stages = [json.loads(line) for line in (work / "stages.jsonl").read_text().splitlines() if line.strip()] \
        if (work / "stages.jsonl").is_file() else []
    sd = load(work / "bench_sd.json")
    device = (sd or {}).get("info", {}).get("device", "unknown")
    report = {"date": datetime.date.today().isoformat(), "device": device, "stages": stages, "bench_sd": sd,
              "bench_field": load(work / "bench_field.json"), "cli_report": load(work / "cli" / "report.json"),
              "demo_report": load(work / "demo" / "report.json"),
              "texture_report": load(work / "texture" / "report.json"), "figures": figures(work)}
    on_gpu = device != "cpu" and device != "unknown"
    report["targets"] = {name: {"target": t, "higher_is_better": h,
                                "verdict": verdict(report["figures"][name], t, h) if on_gpu else "not a GPU run"}
                         for name, (t, h) in TARGETS.items()}
    name = f"gpu_check_{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}_{report['date']}.json"
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"\nwrote {out / name} (commit it as bench/results/{name})")
    return report


if __name__ == "__main__":
    main()
