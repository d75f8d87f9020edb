"""End to end on the built-in exact prior: every method trains, writes its files, and moves the
field toward the prompt's object; stopping writes a checkpoint and --resume continues from it."""
import json

import pytest
import torch

from backend.checkpoint import load_checkpoint, load_model, nerf_settings
from backend.config import with_preset
from backend.events import Finished, Preview, Progress
from backend.nerf import NeRFModel
from backend.train import active_levels, augment_background, ground_truth_metrics, train

PROMPT = "a green torus"  # far from the initial blob, so improvement is not an accident


def tiny(method: str, **overrides):
    return with_preset("tiny", prompt=PROMPT, method=method, steps=60, preview_every=30, checkpoint_every=30,
                       **overrides)


@pytest.fixture(scope="module")
def initial_metrics():
    config = tiny("sds").resolved()
    torch.manual_seed(config.seed)
    from backend.priors.shapes_world import parse_prompt
    return ground_truth_metrics(NeRFModel(nerf_settings(config)), parse_prompt(PROMPT), config.mesh_threshold)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sds", "nfsd", "sdi", "fsd"])
def test_every_method_trains_writes_files_and_beats_the_initial_blob(method, tmp_path, initial_metrics):
    events = []
    result = train(tiny(method), tmp_path, on_event=events.append)

    for name in ("checkpoint.pt", "turntable.png", "report.json", "mesh.glb", "mesh.obj", "texture.png"):
        assert result.outputs[name].exists(), name
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["step_00030.png", "step_00060.png"]
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.step for p in progress] == list(range(1, 61))
    assert all(p.it_per_s > 0 and p.eta_s >= 0 for p in progress)
    assert sum(isinstance(e, Preview) for e in events) == 2 and isinstance(events[-1], Finished)

    report = json.loads((tmp_path / "report.json").read_text())
    truth = report["ground_truth"]
    assert report["settings"]["method"] == method and report["steps_done"] == 60
    assert report["median_step_s"] > 0 and set(report["median_breakdown_s"]) == {"render", "prior", "backward"}
    # Volume IoU at the export threshold: the field must have moved toward the torus.
    assert truth["volume_iou"] > initial_metrics["volume_iou"] + 0.05, (truth, initial_metrics)


def test_stop_writes_a_checkpoint_and_resume_continues_from_it(tmp_path):
    config = with_preset("tiny", prompt="a red cube", steps=12, checkpoint_every=0, preview_every=0,
                         export_mesh=False)
    calls = iter(range(1000))
    stopped = train(config, tmp_path, should_stop=lambda: next(calls) >= 5)
    assert stopped.stopped and load_checkpoint(tmp_path)["step"] == 5
    assert not (tmp_path / "report.json").exists()

    events = []
    resumed = train(config, tmp_path, on_event=events.append, resume=True)
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert steps == list(range(6, 13)) and not resumed.stopped
    model, loaded_config = load_model(tmp_path / "checkpoint.pt")
    assert loaded_config.prompt == "a red cube" and load_checkpoint(tmp_path)["step"] == 12
    assert model.density(torch.zeros(1, 3)).item() > 0


def test_progressive_levels_schedule():
    config = with_preset("standard", prompt="x", steps=10000, hash_levels_every=500, hash_levels_after=2000).resolved()
    assert [active_levels(s, config) for s in (0, 1999, 2000, 2499, 2500, 6000, 9999)] == [8, 8, 9, 9, 10, 16, 16]


def test_background_augmentation_recomposites_over_one_solid_colour():
    from types import SimpleNamespace
    foreground = torch.rand(1, 4, 4, 3)
    opacity = torch.rand(1, 4, 4, 1)
    learned = torch.rand(1, 4, 4, 3)
    render = SimpleNamespace(rgb=foreground * opacity + (1 - opacity) * learned, opacity=opacity, background=learned)
    generator = torch.Generator().manual_seed(0)
    rgb, background = augment_background(render, 1.0, generator)
    colour = background[0, 0, 0]
    assert torch.allclose(background, colour.expand_as(background))       # one solid colour
    assert torch.allclose(rgb, foreground * opacity + (1 - opacity) * colour, atol=1e-6)
    rgb, background = augment_background(render, 0.0, generator)
    assert rgb is render.rgb and background is render.background
