"""bench/gpu_check.sh, the one-shot GPU measurement, run here in its --cpu-smoke mode: the same stages
(GPU tests, benchmarks beside the plain reference, the CLI on a saved random SD folder, the shapes demo,
the field benchmark, texture mode) with tiny shapes on the CPU, then the summary table and JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_smoke_runs_every_stage_and_writes_the_table_and_json(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    run = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu-smoke"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    written = list(tmp_path.glob("gpu_check_*.json"))
    assert len(written) == 1 and (tmp_path / "gpu_check.log").is_file()
    report = json.loads(written[0].read_text())
    stages = {s["stage"]: s["rc"] for s in report["stages"]}
    assert stages == {"env": 0, "pytest_gpu": 0, "bench_sd": 0, "demo": 0, "cli": 0, "bench_field": 0,
                      "texture": 0}, stages
    rows = {(r["render"], r["method"]) for r in report["bench_sd"]["results"]}
    assert rows == {(render, method) for render in ("image", "nerf")
                    for method in ("plain", "sds", "nfsd", "sdi", "fsd")}
    assert report["cli_report"]["steps_done"] == 2 and report["demo_report"]["steps_done"] == 3
    figures = report["figures"]
    assert figures["prior side SDS / plain speed-up"] > 0 and figures["shapes demo on CUDA, it/s"] > 0
    assert report["texture_report"]["steps_done"] == 3 and figures["texture mode on CUDA, it/s"] > 0
    assert all(t["verdict"] == "not a GPU run" for t in report["targets"].values())
    table = run.stdout[run.stdout.rindex("=== summary"):]
    assert "prior side SDS / plain speed-up" in table and "whole-step SDI / SDS time" in table
