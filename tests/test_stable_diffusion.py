"""Stable Diffusion as a prior, on a tiny random pipeline saved to disk and loaded back offline through
StableDiffusionPrior.load: the code path users run, minus the download."""
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.cameras import orbit_cameras, view_suffix
from backend.errors import UserError
from backend.methods import METHOD_CLASSES, gradient_loss, make_method
from backend.priors import load_prior
from backend.priors.base import NEGATIVE, NFSD_NEGATIVE_PROMPT, TEXT, UNCOND, NoiseSchedule, View
from backend.priors.sd_loading import DEFAULT_MODEL
from backend.priors.sd_perp_neg import (BACK, FRONT, OVERHEAD, SIDE, W_FRONT_SIDE, perp_neg_text, perpendicular,
                                        view_mixture)
from backend.priors.sd_random import save_random_pipeline
from backend.priors.stable_diffusion import StableDiffusionPrior
from tests.helpers import PROMPT, random_view

REPO = Path(__file__).resolve().parents[1]

# The models here are tiny: with several threads on a busy machine, thread handoffs cost more than the
# maths (a UNet call went from 40 ms to seconds), so this module computes on one thread.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def prior(sd_folder):
    return StableDiffusionPrior.load(sd_folder, offline=True)


def edited_copy(sd_folder, tmp_path, edit):
    """A copy of the tiny pipeline with edit(folder) applied."""
    folder = tmp_path / "edited"
    shutil.copytree(sd_folder, folder)
    edit(folder)
    return folder


def set_scheduler(**changes):
    def edit(folder):
        path = folder / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return edit


def make_view(elevations, azimuths, size=16):
    n = len(azimuths)
    cameras = orbit_cameras(torch.tensor(elevations, dtype=torch.float32), torch.tensor(azimuths, dtype=torch.float32),
                            torch.full((n,), 1.8), torch.full((n,), 50.0), size, size)
    return View(cameras, "albedo", cameras.positions * 1.5, torch.ones(n, 3, size, size), torch.ones(n, 1, size, size))


class CallCounter:
    """Counts forward calls of a module and records their batch sizes."""

    def __init__(self, module):
        self.batches = []
        module.register_forward_hook(lambda _m, args, _out: self.batches.append(args[0].shape[0]))


class UNetInputs:
    """Records the timesteps [N] and text embeddings [N, L, D] of each UNet call."""

    def __init__(self, unet):
        self.timesteps, self.embeddings = [], []
        unet.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, _module, args, kwargs, _out):
        self.timesteps.append(args[1].clone())
        self.embeddings.append(kwargs["encoder_hidden_states"].clone())


@pytest.fixture(scope="module")
def pipeline(sd_folder):
    """The same folder loaded by diffusers' own StableDiffusionPipeline: the reference for what the prior
    feeds its UNet (the pipeline's text encoding) and what the UNet answers."""
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, requires_safety_checker=False)


@torch.no_grad()
def pipeline_embeddings(pipeline, prompts) -> torch.Tensor:
    """[N, L, D]: the pipeline's own text-encoder output (encode_prompt, no guidance) for each prompt."""
    return torch.cat([pipeline.encode_prompt(p, "cpu", 1, False)[0] for p in prompts])


@torch.no_grad()
def pipeline_noise(pipeline, z, t, prompts) -> torch.Tensor:
    """[N, 4, h, w]: the pipeline's UNet on z [N] at timesteps t [N], sample i conditioned on prompts[i]."""
    return pipeline.unet(z, t, encoder_hidden_states=pipeline_embeddings(pipeline, prompts)).sample


def matches(a, b) -> bool:
    """Equal up to the float32 noise of a batched against a separate UNet call (the tolerance used here)."""
    return torch.allclose(a, b, atol=1e-5, rtol=1e-4)


# ---- loading ---------------------------------------------------------------------------------------

def test_load_gives_a_described_fp32_prior_on_cpu(prior, sd_folder):
    assert prior.latent_shape == (4, 8, 8) and prior.render_resolution == 16
    info = prior.describe()
    assert info["model"] == str(sd_folder) and info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["latent_mode"] == "vae" and info["prediction_type"] == "epsilon"
    assert len(info["weights_sha256"]) == 64 and info["attention"] == ["AttnProcessor2_0"]
    assert all(not p.requires_grad for m in (prior.unet, prior.vae, prior.text_encoder) for p in m.parameters())


def test_load_prior_reaches_the_same_prior(sd_folder):
    prior = load_prior(str(sd_folder), offline=True)
    assert isinstance(prior, StableDiffusionPrior) and prior.describe()["model"] == str(sd_folder)


def test_weights_hash_is_stable_and_tells_weights_apart(prior, sd_folder, tmp_path):
    assert StableDiffusionPrior.load(sd_folder, offline=True).weights_sha256 == prior.weights_sha256
    other = save_random_pipeline(tmp_path / "other", "tiny", seed=1)
    assert StableDiffusionPrior.load(other, offline=True).weights_sha256 != prior.weights_sha256


def test_schedule_is_sds_scaled_linear_schedule(prior):
    from diffusers import DDPMScheduler
    reference = NoiseSchedule().alphas_cumprod
    assert torch.allclose(prior.schedule.alphas_cumprod, reference)
    diffusers_abar = DDPMScheduler.from_pretrained(prior.model_id, subfolder="scheduler").alphas_cumprod
    assert torch.allclose(diffusers_abar.double(), reference, atol=1e-6)


def test_a_different_schedule_is_used_with_a_warning(sd_folder, tmp_path, caplog):
    folder = edited_copy(sd_folder, tmp_path, set_scheduler(beta_end=0.02))
    with caplog.at_level(logging.WARNING):
        prior = StableDiffusionPrior.load(folder, offline=True)
    assert "noise schedule differs" in caplog.text
    assert prior.schedule.alphas_cumprod[-1] < NoiseSchedule().alphas_cumprod[-1] / 2


def test_a_schedule_of_other_length_is_refused(sd_folder, tmp_path):
    folder = edited_copy(sd_folder, tmp_path, set_scheduler(num_train_timesteps=500))
    with pytest.raises(UserError, match="500 noise steps"):
        StableDiffusionPrior.load(folder, offline=True)


# ---- bad input -------------------------------------------------------------------------------------

def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        StableDiffusionPrior.load(str(tmp_path / "nowhere" / "sd"), offline=True)


def test_a_folder_that_is_not_sd_names_what_is_missing_and_how_to_fetch(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "unet").mkdir()
    with pytest.raises(UserError, match=r"no vae/, text_encoder/, tokenizer/, scheduler/") as error:
        StableDiffusionPrior.load(tmp_path, offline=True)
    assert f"hf download {DEFAULT_MODEL}" in str(error.value)


def test_a_single_checkpoint_file_is_refused_with_the_conversion(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="single file.*from_single_file"):
        StableDiffusionPrior.load(path, offline=True)


def test_damaged_weights_are_a_clear_error(sd_folder, tmp_path):
    folder = edited_copy(sd_folder, tmp_path,
                         lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage"))
    with pytest.raises(UserError, match="could not load Stable Diffusion.*download it again"):
        StableDiffusionPrior.load(folder, offline=True)


def test_sdxl_is_refused(sd_folder, tmp_path):
    def make_xl(folder):
        index = json.loads((folder / "model_index.json").read_text())
        index.update(_class_name="StableDiffusionXLPipeline", text_encoder_2=["transformers", "CLIPTextModel"])
        (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="StableDiffusionXLPipeline.*only Stable Diffusion 1.x/2.x"):
        StableDiffusionPrior.load(edited_copy(sd_folder, tmp_path, make_xl), offline=True)


def test_uncached_hub_id_offline_says_how_to_fetch_it():
    with pytest.raises(UserError, match="not in the Hugging Face cache and offline mode is on") as error:
        StableDiffusionPrior.load("distill3d-tests/no-such-model", offline=True)
    assert "hf download distill3d-tests/no-such-model" in str(error.value)
    assert "--prior /path/to/sd-model" in str(error.value)


@pytest.mark.slow
def test_hub_ids_load_from_the_hf_cache_and_fail_clearly_when_the_hub_is_unreachable(sd_folder, tmp_path):
    """A fresh interpreter (huggingface_hub reads these at import) with its own HF cache holding one model
    and a Hub endpoint that refuses connections: the cached id loads, an uncached one is a clear UserError."""
    snapshot = tmp_path / "hub" / "models--distill3d-tests--tiny-sd" / "snapshots" / "0123abcd"
    shutil.copytree(sd_folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    code = ("from backend.errors import UserError\n"
            "from backend.priors.stable_diffusion import StableDiffusionPrior\n"
            "print('LOADED', StableDiffusionPrior.load('distill3d-tests/tiny-sd', offline=True).latent_shape)\n"
            "try:\n    StableDiffusionPrior.load('distill3d-tests/no-such-model', offline=False)\n"
            "except UserError as e:\n    print('USERERROR', e)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert "LOADED (4, 8, 8)" in result.stdout, result.stderr[-2000:]
    assert "USERERROR could not download distill3d-tests/no-such-model" in result.stdout, result.stderr[-2000:]
    assert "hf download distill3d-tests/no-such-model" in result.stdout


def test_unknown_latent_mode_is_refused(sd_folder):
    with pytest.raises(UserError, match="latent_mode = 'pixels' is not allowed: use one of 'vae', 'rgb'"):
        StableDiffusionPrior.load(sd_folder, offline=True, latent_mode="pixels")


def test_a_method_asking_for_a_missing_negative_prompt_is_told_to_set_one(prior):
    prior.set_prompts(PROMPT)
    z = torch.randn(1, 4, 8, 8)
    with pytest.raises(UserError, match="negative prompt"):
        prior.predict_noise(z, torch.tensor([500]), (TEXT, NEGATIVE), random_view(1))


# ---- prompts -----------------------------------------------------------------------------------------

def test_text_embeddings_are_encoded_once_and_cached(prior):
    calls = CallCounter(prior.text_encoder)
    prior.set_prompts(PROMPT, NFSD_NEGATIVE_PROMPT, view_dependent=True)
    assert calls.batches == [7]  # prompt, "", negative, 4 view prompts: one batch
    prior.set_prompts(PROMPT, NFSD_NEGATIVE_PROMPT, view_dependent=True)
    view = random_view(2)
    for t in (900, 500, 100):
        prior.predict_noise(torch.randn(2, 4, 8, 8), torch.tensor([t, t]), (TEXT, UNCOND, NEGATIVE), view)
    assert calls.batches == [7]
    prior.set_prompts(PROMPT, "blurry")  # only the new negative prompt is encoded
    assert calls.batches == [7, 1]


def test_empty_prompt_is_refused(prior):
    with pytest.raises(UserError, match="prompt is empty"):
        prior.set_prompts("   ")


def test_a_prompt_longer_than_clips_context_is_warned_about(prior, caplog):
    with caplog.at_level(logging.WARNING):
        prior.set_prompts("a cube " * 40, view_dependent=False)
    assert "any words past that are ignored" in caplog.text


def test_view_dependent_text_is_chosen_per_camera(prior, pipeline):
    # front, side, back, overhead; the same z and t for all four cameras
    suffixes = ("front view", "side view", "back view", "overhead view")
    view = make_view([0.0, 10.0, 20.0, 70.0], [10.0, -100.0, 170.0, 0.0])
    z = torch.randn(1, 4, 8, 8).expand(4, -1, -1, -1)
    t = torch.full((4,), 400)
    prior.set_prompts(PROMPT, view_dependent=True)
    unet_inputs = UNetInputs(prior.unet)
    per_camera = prior.predict_noise(z, t, (TEXT,), view)[0]
    # camera i is conditioned on the pipeline's encoding of "PROMPT, <its own view>" and on no other view's
    # (so the four view prompts do encode apart, and a camera given a wrong view would fail)
    view_prompts = [f"{PROMPT}, {s}" for s in suffixes]
    given, own = unet_inputs.embeddings[0], pipeline_embeddings(pipeline, view_prompts)
    assert [[matches(given[i], own[j]) for j in range(4)] for i in range(4)] == \
        [[i == j for j in range(4)] for i in range(4)]
    torch.testing.assert_close(per_camera, pipeline_noise(pipeline, z, t, view_prompts), atol=1e-5, rtol=1e-4)
    for i, suffix in enumerate(suffixes):
        prior.set_prompts(f"{PROMPT}, {suffix}", view_dependent=False)
        expected = prior.predict_noise(z[:1], t[:1], (TEXT,), make_view([0.0], [0.0]))[0, 0]
        torch.testing.assert_close(per_camera[i], expected, atol=1e-5, rtol=1e-4)

    prior.set_prompts(PROMPT, view_dependent=False)
    plain = prior.predict_noise(z, t, (TEXT,), view)[0]
    torch.testing.assert_close(plain[0], plain[3])  # no suffix: every camera gets the plain prompt
    torch.testing.assert_close(unet_inputs.embeddings[-1], pipeline_embeddings(pipeline, [PROMPT] * 4),
                               atol=1e-5, rtol=1e-4)


def test_view_indices_on_the_device_agree_with_view_suffix():
    from backend.cameras import VIEW_SUFFIXES, view_suffix
    from backend.priors.stable_diffusion import view_indices

    generator = torch.Generator().manual_seed(0)
    elevation = torch.cat([torch.rand(2000, generator=generator) * 180 - 90, torch.tensor([60.0, 60.0, 0.0, 0.0])])
    azimuth = torch.cat([torch.rand(2000, generator=generator) * 1080 - 540, torch.tensor([0.0, 45.0, 135.0, -45.0])])
    expected = [VIEW_SUFFIXES.index(view_suffix(e, a)) for e, a in zip(elevation.tolist(), azimuth.tolist())]
    assert view_indices(elevation, azimuth).tolist() == expected


# ---- noise prediction --------------------------------------------------------------------------------

def test_one_batched_unet_call_equals_separate_calls(prior, pipeline):
    prior.set_prompts(PROMPT, NFSD_NEGATIVE_PROMPT)
    unet_calls = CallCounter(prior.unet)
    view = random_view(2)
    z = torch.randn(2, 4, 8, 8)
    t = torch.tensor([700, 150])
    together = prior.predict_noise(z, t, (TEXT, UNCOND, NEGATIVE), view)
    assert together.shape == (3, 2, 4, 8, 8) and unet_calls.batches == [6]
    for i, condition in enumerate((TEXT, UNCOND, NEGATIVE)):
        alone = prior.predict_noise(z, t, (condition,), view)[0]
        torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=1e-4)
    # each slice of the batch is the pipeline's UNet for its own condition, and for no other: TEXT is the
    # prompt with each camera's view suffix (view-dependent by default), UNCOND "", NEGATIVE the negative
    suffixes = [view_suffix(e, a) for e, a in zip(view.cameras.elevation.tolist(), view.cameras.azimuth.tolist())]
    expected = [pipeline_noise(pipeline, z, t, prompts) for prompts in
                ([f"{PROMPT}, {s}" for s in suffixes], ["", ""], [NFSD_NEGATIVE_PROMPT] * 2)]
    assert [[matches(together[i], expected[j]) for j in range(3)] for i in range(3)] == \
        [[i == j for j in range(3)] for i in range(3)]


def test_prediction_follows_the_timestep_per_sample(prior, pipeline):
    prior.set_prompts(PROMPT)
    view = random_view(2)
    z = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1)
    unet_inputs = UNetInputs(prior.unet)
    e = prior.predict_noise(z, torch.tensor([900, 100]), (UNCOND,), view)[0]
    assert unet_inputs.timesteps[0].tolist() == [900, 100]  # the UNet is given each sample's own t
    for i, t in enumerate((900, 100)):  # each sample is the prediction at its own timestep, alone
        alone = prior.predict_noise(z[:1], torch.tensor([t]), (UNCOND,), random_view(1))[0, 0]
        torch.testing.assert_close(e[i], alone, atol=1e-5, rtol=1e-4)
    swapped = prior.predict_noise(z, torch.tensor([100, 900]), (UNCOND,), view)[0]
    torch.testing.assert_close(swapped.flip(0), e, atol=1e-5, rtol=1e-4)
    # sample i is the pipeline's UNet at its own t and not at the other sample's t: the same z read at the
    # other timestep gives a different prediction, so a sample given the wrong t would fail here
    at = {t: pipeline_noise(pipeline, z[:1], torch.tensor([t]), [""])[0] for t in (900, 100)}
    assert [(matches(e[i], at[own]), matches(e[i], at[other])) for i, own, other in ((0, 900, 100), (1, 100, 900))] \
        == [(True, False), (True, False)]


def test_v_prediction_models_are_converted_to_noise(sd_folder, tmp_path, prior):
    folder = edited_copy(sd_folder, tmp_path, set_scheduler(prediction_type="v_prediction"))
    v_prior = StableDiffusionPrior.load(folder, offline=True)
    for p in (prior, v_prior):
        p.set_prompts(PROMPT)
    view, z, t = random_view(1), torch.randn(1, 4, 8, 8), torch.tensor([600])
    v = prior.predict_noise(z, t, (TEXT,), view)[0]  # the same UNet output, read as v
    a, s = NoiseSchedule().a_s(t, z)
    torch.testing.assert_close(v_prior.predict_noise(z, t, (TEXT,), view)[0], (a * v + s * z).float(),
                               atol=1e-5, rtol=1e-4)


def test_gradient_reaches_the_render_through_the_vae_and_no_weight(prior):
    prior.set_prompts(PROMPT)
    rgb = torch.rand(2, 3, 32, 32, requires_grad=True)  # resized to 16 for the VAE
    x = prior.encode(rgb)
    assert x.shape == (2, 4, 8, 8) and x.dtype == torch.float32
    eps, t = torch.randn_like(x), torch.tensor([500, 500])
    z_t = prior.schedule.add_noise(x, eps, t)  # still attached to the graph
    e = prior.predict_noise(z_t, t, (TEXT, UNCOND), random_view(2))
    assert not e.requires_grad
    gradient_loss(x, e[0] - eps).backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert all(p.grad is None for m in (prior.unet, prior.vae, prior.text_encoder) for p in m.parameters())


def test_decode_gives_images_in_unit_range(prior):
    image = prior.decode(torch.randn(2, 4, 8, 8))
    assert image.shape == (2, 3, 16, 16) and image.min() >= 0 and image.max() <= 1


def test_rgb_latent_mode_maps_renders_affinely_at_latent_size(sd_folder, prior):
    rgb_prior = StableDiffusionPrior.load(sd_folder, offline=True, latent_mode="rgb")
    assert rgb_prior.render_resolution == 8 and rgb_prior.describe()["latent_mode"] == "rgb"
    render = torch.rand(1, 3, 64, 64, requires_grad=True)
    x = rgb_prior.encode(render)
    assert x.shape == (1, 4, 8, 8)
    x.sum().backward()
    assert render.grad.abs().sum() > 0
    # On flat colours the map is the least-squares affine fit to the VAE's own latents (centre of the
    # latent image): it must beat the best constant, which a transposed or offset map would not.
    levels = torch.tensor([0.0, 0.5, 1.0])
    colors = torch.cartesian_prod(levels, levels, levels)
    flat = colors[:, :, None, None].expand(-1, -1, 16, 16)
    cheap = rgb_prior.encode(flat)[:, :, 4, 4]
    with torch.no_grad():
        exact = prior.encode(flat)[:, :, 2:-2, 2:-2].mean(dim=(2, 3))
    assert ((cheap - exact) ** 2).sum() < ((exact - exact.mean(0)) ** 2).sum()


# ---- Perp-Neg ----------------------------------------------------------------------------------------

def test_perpendicular_removes_exactly_the_parallel_part():
    a, b = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    p = perpendicular(a, b)
    assert (p * b).sum(dim=(1, 2, 3)).abs().max() < 1e-5
    torch.testing.assert_close(perpendicular(2.0 * b, b), torch.zeros_like(b), atol=1e-6, rtol=0)


def test_perp_neg_keeps_the_text_direction_and_drops_negatives_along_it():
    e0, ey, en = torch.randn(3, 2, 4, 2, 2).unbind(0)
    out = perp_neg_text(e0, ey, torch.stack([en, ey]), torch.tensor([[1.5, 7.0], [0.0, 3.0]]))
    d_text = ey - e0
    # the component along d_y is untouched; the negative equal to the text prompt does nothing
    assert ((out - e0 - d_text) * d_text).sum(dim=(1, 2, 3)).abs().max() < 1e-4
    torch.testing.assert_close(out[0], (ey - 1.5 * perpendicular(en - e0, d_text))[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1], ey[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("elevation, azimuth, positive, negatives", [
    (0.0, 0.0, FRONT, (FRONT, SIDE)),
    (0.0, 90.0, SIDE, (SIDE, FRONT)),  # the side-to-back branch starts at 90
    (0.0, -180.0, BACK, (SIDE, FRONT)),
    (75.0, 30.0, OVERHEAD, None),
])
def test_view_mixture_at_the_pure_views(elevation, azimuth, positive, negatives):
    weights, negative_views, negative_weights = view_mixture(elevation, azimuth)
    assert weights.index(1.0) == positive and sum(weights) == pytest.approx(1.0)
    if negatives is None:
        assert negative_weights == [0.0, 0.0]
        return
    assert tuple(negative_views) == negatives
    own = negative_weights[negative_views.index(positive)] if positive in negative_views else 0.0
    assert own == pytest.approx(0.0, abs=1e-3)  # a view is never its own negative
    assert max(negative_weights) > 0.3


def test_view_mixture_interpolates_between_views():
    weights, _, negative_weights = view_mixture(10.0, 45.0)
    assert weights[FRONT] == pytest.approx(0.5) and weights[SIDE] == pytest.approx(0.5)
    assert negative_weights[0] == pytest.approx(negative_weights[1])  # symmetric between front and side
    # mirrored azimuths mean the same view
    assert view_mixture(10.0, 120.0) == view_mixture(10.0, -120.0)


def test_perp_neg_prediction_at_the_front_uses_the_side_prompt_as_negative(prior):
    """At azimuth 0 the positive prompt is the front one; its front negative is perpendicular to nothing,
    so e_text' = e_0 + d_front - w perp(d_side, d_front) with w = W_FRONT_SIDE at r = 0."""
    prior.set_prompts(PROMPT)
    z, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    front, side = make_view([0.0], [0.0]), make_view([0.0], [90.0])
    e_front, e0 = prior.predict_noise(z, t, (TEXT, UNCOND), front)
    e_side = prior.predict_noise(z, t, (TEXT,), side)[0]
    prior.perp_neg = True
    unet_calls = CallCounter(prior.unet)
    combined, e0_again = prior.predict_noise(z, t, (TEXT, UNCOND), front)
    assert unet_calls.batches == [4]  # text, uncond and the two negatives in one call
    d_front = e_front - e0
    w_side = W_FRONT_SIDE[0] * math.exp(0.0) + W_FRONT_SIDE[2]
    expected = e0 + d_front - w_side * perpendicular(e_side - e0, d_front)
    torch.testing.assert_close(combined, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(e0_again, e0, atol=1e-5, rtol=1e-4)
    assert (combined - e_front).abs().max() > 1e-4


def test_perp_neg_adds_the_empty_prompt_when_a_method_asks_only_for_text(prior):
    prior.set_prompts(PROMPT)
    prior.perp_neg = True
    view = random_view(2)
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 300])
    alone = prior.predict_noise(z, t, (TEXT,), view)
    assert alone.shape == (1, 2, 4, 8, 8)
    torch.testing.assert_close(alone[0], prior.predict_noise(z, t, (UNCOND, TEXT), view)[1], atol=1e-5, rtol=1e-4)


# ---- methods -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(METHOD_CLASSES))
@pytest.mark.parametrize("perp_neg", [False, True])
def test_every_method_takes_steps_with_stable_diffusion(sd_folder, name, perp_neg):
    prior = StableDiffusionPrior.load(sd_folder, offline=True, perp_neg=perp_neg)
    method = make_method(name, max_steps=3, seed=0)
    prior.set_prompts(PROMPT, method.default_negative)
    method.setup(prior)
    logits = torch.zeros(2, 3, 24, 24, requires_grad=True)  # a stand-in for the NeRF: a learnable render
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for step in range(3):
        view = random_view(2, size=24, seed=step)
        x = prior.encode(torch.sigmoid(logits))
        out = method.gradient(x.detach(), step, view)
        assert out.grad.shape == x.shape and torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
        optimizer.zero_grad()
        gradient_loss(x, out.grad).backward()
        optimizer.step()
    assert logits.detach().abs().sum() > 0

