"""The command line as a user meets it: a real subprocess, one clear line for bad input, exit code 2."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("args, needle", [
    (["generate", "a dragon"], "knows no object in the prompt"),
    (["generate", "a red cube", "--steps", "0"], "steps = 0 is out of range"),
    (["generate", "a red cube", "--cfg", "nan"], "cfg must be a number"),
    (["generate", "a red cube", "--coarse-fraction", "1.5"], "coarse_fraction = 1.5 is out of range"),
    (["generate", "a red cube", "--set", "weighting=cubic"], "weighting"),
    (["generate", "a red cube", "--set", "banana=1"], "banana"),
    (["generate", "a red cube", "--device", "cuda:0"], "no CUDA"),
    (["generate", "a red cube", "--out", "/proc/distill3d"], "cannot write to output folder"),
    (["export", "/nonexistent/checkpoint.pt"], "no checkpoint at"),
    (["generate", "a red cube", "--prior-option", "perp_neg=true"], "'shapes' prior takes no options"),
    (["generate", "a red cube", "--prior", "/tmp/sd", "--prior-option", "turbo=1"], "unknown prior option(s) turbo"),
])
def test_bad_input_is_one_clear_line_and_exit_code_2(args, needle):
    if "--device" in args:
        pytest.importorskip("torch")
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    result = run_cli(*args, "--preset", "tiny") if args[0] == "generate" else run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unknown_method_is_refused_by_the_parser():
    result = run_cli("generate", "a red cube", "--method", "dreamfusion")
    assert result.returncode == 2 and "invalid choice: 'dreamfusion'" in result.stderr


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = run_cli("generate", "a red cube", "--preset", "tiny", "--out", str(tmp_path), "--resume")
    assert result.returncode == 2 and "corrupt or not a Distill3D checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_a_checkpoint(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "backend", "generate", "a red cube", "--preset", "tiny",
                                "--steps", "5000", "--out", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "previews").exists():
        time.sleep(0.5)
    time.sleep(8)  # let it take some steps
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Resume with" in out and (tmp_path / "checkpoint.pt").exists()
    assert "Traceback" not in err
