"""End to end on the built-in exact prior: every method trains, writes its files, and moves the
field toward the prompt's object; stopping writes a checkpoint and --resume continues from it."""
import json
from dataclasses import replace

import pytest
import torch

from backend.checkpoint import load_checkpoint, load_model, nerf_settings
from backend.config import with_preset
from backend.events import Finished, Preview, Progress
from backend.nerf import NeRFModel
from backend.train import active_levels, augment_background, ground_truth_metrics, render_size, train

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



@pytest.mark.usefixtures("one_thread")  # bit-equal runs: on 2 threads of a busy machine they differed (2026-12-04)
def test_a_trainer_driven_by_hand_reads_previews_and_checkpoints_without_changing_the_run(tmp_path):
    """What the server, batch and CLI get through train(), a caller gets by stepping a Trainer itself;
    reading back, previewing and checkpointing between steps change nothing about the run."""
    from backend.train import Trainer

    config = with_preset("tiny", prompt="a red cube", steps=6, checkpoint_every=0, preview_every=0,
                         export_mesh=False)
    calls = iter(range(1000))
    reference = train(config, tmp_path / "train", should_stop=lambda: next(calls) >= 4)
    events = []
    trainer = Trainer(config, tmp_path / "hand", on_event=events.append)
    trainer.step(), trainer.step()
    assert trainer.step_index == 2 and not trainer.done and trainer.read_back() == trainer.loss > 0
    image = trainer.preview()
    assert (tmp_path / "hand" / "previews" / "step_00002.png").exists() and image.shape[-1] == 3
    assert load_checkpoint(trainer.checkpoint())["step"] == 2
    trainer.step(), trainer.step()
    result = trainer.stop()
    assert result.stopped and [e.step for e in events if isinstance(e, (Progress, Preview))] == [1, 2, 2, 3, 4]
    ours, theirs = load_checkpoint(result.outputs["checkpoint.pt"]), load_checkpoint(reference.outputs["checkpoint.pt"])
    assert ours["step"] == theirs["step"] == 4 and torch.equal(ours["generator"], theirs["generator"])
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])


def test_progressive_levels_schedule():
    config = with_preset("standard", prompt="x", steps=10000, hash_levels_every=500, hash_levels_after=2000).resolved()
    assert [active_levels(s, config) for s in (0, 1999, 2000, 2499, 2500, 6000, 9999)] == [8, 8, 9, 9, 10, 16, 16]


def test_coarse_to_fine_renders_half_size_first_and_the_prior_keeps_its_size(tmp_path):
    """The first coarse_fraction of the steps render at half the resolution, the rest at the
    resolution; the method always sees the prior's size (the coarse render is resized to it)."""
    seen = []

    class Recording(NaNAtSteps):
        def predict_noise(self, z_t, t, conditions, view):
            seen.append((view.cameras.height, view.cameras.width, tuple(z_t.shape[-2:])))
            return self.inner.predict_noise(z_t, t, conditions, view)

    config = with_preset("tiny", prompt="a red cube", method="sds", steps=6, coarse_fraction=0.5,
                         checkpoint_every=0, preview_every=0, export_mesh=False)
    train(config, tmp_path, prior=Recording([]))
    assert seen == [(16, 16, (32, 32))] * 3 + [(32, 32, (32, 32))] * 3
    assert [render_size(step, replace(config, coarse_fraction=0.0)) for step in (0, 5)] == [32, 32]
    assert render_size(0, replace(config, resolution=9, coarse_fraction=1.0)) == 8  # never under the smallest size


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


class NaNAtSteps:
    """The shapes prior, except that its noise predictions are NaN on the calls listed in `bad`
    (a real prior and a real loop; only the failure is injected)."""

    def __init__(self, bad):
        from backend.priors.shapes import ShapesPrior
        self.inner, self.bad, self.calls = ShapesPrior(resolution=32), set(bad), 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_noise(self, z_t, t, conditions, view):
        out = self.inner.predict_noise(z_t, t, conditions, view)
        self.calls += 1
        return out * float("nan") if self.calls - 1 in self.bad else out


def test_nan_guard_skips_bad_steps_and_keeps_going(tmp_path):
    from backend.events import Log
    config = with_preset("tiny", prompt="a red cube", steps=8, checkpoint_every=0, preview_every=0, export_mesh=False)
    events = []
    clean = train(config, tmp_path / "clean", prior=NaNAtSteps([]), on_event=events.append)
    result = train(config, tmp_path / "nan", prior=NaNAtSteps(range(7)), on_event=events.append)  # only step 8 is good
    warnings = [e.message for e in events if isinstance(e, Log) and e.level == "warning"]
    skipped = [int(w.split(": ")[1].split(" step(s)")[0]) for w in warnings if "non-finite gradient skipped" in w]
    assert sum(skipped) == 7 and any("at most 7 in a row" in w for w in warnings), warnings
    model, _ = load_model(result.outputs["checkpoint.pt"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # one good step moved the field less than eight did: the bad ones changed nothing
    fresh = NeRFModel(nerf_settings(config.resolved()))
    clean_model, _ = load_model(clean.outputs["checkpoint.pt"])
    table = lambda m: m.field.encoding.tables[0].detach()  # noqa: E731
    assert 0 < (table(model) - table(fresh)).abs().sum() < (table(clean_model) - table(fresh)).abs().sum()
    state = load_checkpoint(result.outputs["checkpoint.pt"])
    assert all(int(s["step"]) == 1 for s in state["optimizer"]["state"].values())  # Adam ran once


def test_nan_guard_abandons_the_run_after_twenty_bad_steps_in_a_row(tmp_path):
    config = with_preset("tiny", prompt="a red cube", steps=40, checkpoint_every=0, preview_every=0, export_mesh=False)
    with pytest.raises(RuntimeError, match=r"\d+ steps in a row gave NaN/inf"):
        train(config, tmp_path, prior=NaNAtSteps(range(5, 40)))
    assert load_checkpoint(tmp_path)["step"] <= 30  # abandoned at the first read after 20 bad steps


@pytest.mark.gpu
def test_the_nerf_side_of_a_step_never_syncs_with_the_host():
    """Render, losses, NaN guard, backward, fused Adam, occupancy update, progressive levels and the
    step timer, under CUDA's sync-debug mode "error": any host sync fails, except the sample counts
    the packed ray marcher marks as known (nerf/sampler.py, known_sync). The method and prior are not
    part of this test (the gradient is random noise): they have their own syncs, and their own owners."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from backend.cameras import sample_cameras, sample_light_positions
    from backend.losses import total_loss
    from backend.nan_guard import NaNGuard
    from backend.step_timer import StepTimer

    device = torch.device("cuda")
    config = with_preset("tiny", prompt="a red cube", steps=10).resolved()
    model = NeRFModel(nerf_settings(config), device=device).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    guard, timer, generator = NaNGuard(device), StepTimer(device), torch.Generator().manual_seed(0)

    def step(i):
        marks = [timer.mark()]
        model.set_active_levels(active_levels(i, config))
        model.update_occupancy()
        cameras = sample_cameras(1, 32, 32, generator)
        lights = sample_light_positions(cameras, generator).to(device, non_blocking=True)
        render = model.render(cameras.to(device), "lambertian", lights)
        rgb, _ = augment_background(render, 0.5, generator)
        x = rgb.permute(0, 3, 1, 2) * 2.0 - 1.0
        g = torch.randn(x.shape, device=device)
        loss, _ = total_loss(x, g, render, i, config)
        optimizer.found_inf = guard.check(g, loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        timer.add(marks + [timer.mark()] * 3)

    step(0)                                   # warm-up: lazy initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 4):
            step(i)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    timer.collect()
    assert guard.read() == (0, 0) and len(timer.seconds["step"]) == 4


def test_guidance_scale_is_the_users_else_the_priors_else_the_methods():
    from backend.priors.gaussian_mixture import GaussianMixturePrior
    from backend.priors.shapes import ShapesPrior
    from backend.methods import guidance_scale

    shapes = ShapesPrior(resolution=16)
    assert guidance_scale(None, {}, shapes) == shapes.default_cfg == 1.0
    assert guidance_scale(7.5, {}, shapes) == 7.5
    assert guidance_scale(None, {"cfg": 30.0}, shapes) is None        # the option wins in make_method
    assert guidance_scale(None, None, GaussianMixturePrior()) is None  # SDS's own 100


def test_the_report_records_the_guidance_scale_the_run_used(tmp_path):
    for overrides, expected in (({}, 1.0), ({"cfg": 7.5}, 7.5), ({"method_options": {"cfg": 30.0}}, 30.0)):
        config = with_preset("tiny", prompt=PROMPT, method="sds", steps=2, export_mesh=False, preview_every=0,
                             checkpoint_every=0, **overrides)
        result = train(config, tmp_path / str(expected))
        assert result.report["settings"]["cfg"] == expected


@pytest.mark.parametrize("method", ["sds", "fsd"])
def test_the_true_object_is_a_fixed_point_at_the_shapes_priors_guidance_and_not_at_the_authors(method):
    """Why the shapes prior defaults to cfg 1 (docs/quality.md, "Guidance"): its TEXT denoiser returns
    the object's exact render, so at s = 1 the gradient at that render is 0 for every t and noise; at
    the authors' scale the target is pushed (s - 1)(D_text - D_uncond) off it."""
    from backend.methods import make_method
    from backend.priors.base import TEXT
    from backend.priors.shapes import ShapesPrior
    from tests.helpers import random_view

    prior = ShapesPrior(resolution=16)
    prior.set_prompts("a red cube")
    view = random_view(1, size=16)
    x = prior.candidates(TEXT, view)[0]            # the object's exact render in the prior's space
    norms = {}
    for scale in (prior.default_cfg, 7.5):
        the_method = make_method(method, cfg=scale, max_steps=10, seed=0)
        the_method.setup(prior)
        norms[scale] = max(the_method.gradient(x, step, view).grad.norm().item() for step in range(0, 10, 3))
    assert norms[1.0] < 1e-3 * x.norm().item()
    assert norms[7.5] > 100 * norms[1.0]
