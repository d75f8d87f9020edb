"""`python -m backend export CHECKPOINT`: settings from the run, flags override, and a corrupt
checkpoint names the caller's advice."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from backend.errors import UserError


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint as the tiny preset saves it (threshold 5, which an untrained NeRF's initial
    density blob crosses and 25 does not), with small export settings."""
    from backend.checkpoint import nerf_settings, save_checkpoint
    from backend.config import with_preset
    from backend.nerf import NeRFModel
    config = with_preset("tiny", prompt="a red cube", mesh_resolution=32, texture_size=64, face_budget=800,
                         mesh_smooth=False, mesh_threshold=5.0)
    torch.manual_seed(0)
    model = NeRFModel(nerf_settings(config.resolved()))
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(folder / "checkpoint.pt", config=config.to_dict(), step=config.steps, model=model.state_dict())
    return folder, config


def run_export(argv, capsys) -> tuple[int, dict | None, str]:
    from backend.cli import main
    code = main(["export", *map(str, argv)])
    out, err = capsys.readouterr()
    stats = json.loads(out[out.index("{"):]) if code == 0 else None
    return code, stats, err


def test_export_command_uses_the_runs_settings(tiny_checkpoint, capsys, tmp_path):
    folder, config = tiny_checkpoint
    assert config.mesh_threshold == 5.0
    code, stats, _ = run_export([folder, "--out", tmp_path], capsys)
    assert code == 0
    assert (stats["threshold"], stats["resolution"], stats["face_budget"], stats["texture_size"], stats["smooth"]) == \
        (5.0, 32, 800, 64, False)
    assert stats["density_queries"] <= 32 ** 3 and stats["faces"] <= 800
    assert Image.open(tmp_path / "texture.png").size == (64, 64)


def test_export_command_flags_override_the_runs_settings(tiny_checkpoint, capsys, tmp_path):
    folder, _ = tiny_checkpoint
    code, stats, _ = run_export([folder / "checkpoint.pt", "--out", tmp_path, "--threshold", "3", "--resolution", "24",
                                 "--faces", "300", "--texture-size", "32", "--smooth"], capsys)
    assert code == 0
    assert (stats["threshold"], stats["resolution"], stats["face_budget"], stats["texture_size"], stats["smooth"]) == \
        (3.0, 24, 300, 32, True)
    # the old hard-coded 25 is above this field's densest point: a clear error, nothing written
    code, _, err = run_export([folder, "--out", tmp_path / "high", "--threshold", "25"], capsys)
    assert code == 2 and "densest point" in err and "lower --threshold" in err
    assert not (tmp_path / "high").exists() or not any((tmp_path / "high").iterdir())


def test_corrupt_checkpoint_advice_comes_from_the_caller(tmp_path):
    from backend.checkpoint import load_checkpoint
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"corrupt or not a Distill3D checkpoint.*: start the run again from the "
                                        r"beginning \(delete the file, or resubmit the job\)$"):
        load_checkpoint(path)
    with pytest.raises(UserError, match=": start over without --resume$"):
        load_checkpoint(path, if_corrupt="start over without --resume")
