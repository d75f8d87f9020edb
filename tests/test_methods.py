"""The four distillation methods and DDIM against hand computations on an exact prior (float64).

Every expected value below is computed from the formulas of docs/methods.md with a hand-written
posterior mean and a hand-built noise schedule, never with the code under test."""
import copy
import math

import numpy as np
import pytest
import torch

from backend.cameras import orbit_cameras
from backend.errors import UserError
from backend.methods import METHOD_CLASSES, describe_methods, gradient_loss, make_method
from backend.methods.ddim import ddim_sample, ddim_step, ddim_timesteps
from backend.priors.base import NEGATIVE, NFSD_NEGATIVE_PROMPT, TEXT, UNCOND, View
from backend.priors.exact import FixedImagesPrior

# --- hand-made references --------------------------------------------------------------------------

BETAS = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
ABAR = torch.tensor(np.cumprod(1.0 - BETAS), dtype=torch.float64)   # SD's scaled_linear schedule


def a_s(t):
    return math.sqrt(ABAR[t]), math.sqrt(1.0 - ABAR[t])


def hand_x0(z, images, t):
    """Posterior mean of x0 given z_t over a finite image set: softmax(-|z - a x_k|^2 / 2 s^2)."""
    a, s = a_s(t)
    log_w = np.array([-float(((z - a * img) ** 2).sum()) / (2 * s * s) for img in images])
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    return sum(float(wk) * img for wk, img in zip(w, images))


def hand_eps(z, images, t):
    a, s = a_s(t)
    return (z - a * hand_x0(z, images, t)) / s


def smooth_images(n, size, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    return scale * torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)


IMAGES = smooth_images(3, 4, seed=1, scale=0.5)          # A, B (the prompt) and C
TEXT_IMAGES, UNCOND_IMAGES = IMAGES[:2], IMAGES           # two images for the prompt, all three for ""
NEG_IMAGES = torch.nn.functional.avg_pool2d(IMAGES[:2], 3, 1, 1, count_include_pad=False)


def hand_cfg(z, t, scale):
    e0, ey = hand_eps(z, UNCOND_IMAGES, t), hand_eps(z, TEXT_IMAGES, t)
    return e0 + scale * (ey - e0)


class CountingPrior(FixedImagesPrior):
    """The exact prior, recording the conditions of every predict_noise call."""

    def __init__(self, images):
        super().__init__(images)
        self.calls = []

    def predict_noise(self, z_t, t, conditions, view):
        self.calls.append(tuple(conditions))
        return super().predict_noise(z_t, t, conditions, view)


def make_prior():
    return CountingPrior({TEXT: TEXT_IMAGES, UNCOND: UNCOND_IMAGES, NEGATIVE: NEG_IMAGES})


def make_view(elevation=(15.0,), azimuth=(0.0,), opacity=None, size=4):
    n = len(elevation)
    cams = orbit_cameras(torch.tensor(elevation), torch.tensor(azimuth), torch.full((n,), 1.8),
                         torch.full((n,), 50.0), size, size)
    if opacity is None:
        opacity = torch.ones(n, 1, size, size)
    return View(cams, "albedo", cams.positions.clone(), torch.ones(n, 3, size, size), opacity)


def ready(name, prior=None, **kw):
    method = make_method(name, **kw)
    method.setup(prior or make_prior())
    return method


X = (0.4 * IMAGES[0] + 0.3 * IMAGES[1] + 0.1 * torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(3),
                                                          dtype=torch.float64))[None]


def close(a, b):
    return torch.allclose(a, b, rtol=1e-9, atol=1e-10)


# --- SDS -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weighting", ["sds", "uniform"])
def test_sds_gradient_is_w_times_cfg100_minus_the_noise(weighting):
    sds = ready("sds", options={"weighting": weighting}, seed=4)
    assert sds.cfg == 100.0
    for step in range(5):
        out = sds.gradient(X, step, make_view())
        eps, t = out.extras["noise"], out.t
        a, s = a_s(t)
        z = a * X[0] + s * eps[0]
        w = 1.0 - float(ABAR[t]) if weighting == "sds" else 1.0
        assert close(out.grad[0], w * (hand_cfg(z, t, 100.0) - eps[0]))


def test_sds_draws_t_in_20_980_fresh_noise_each_step_and_anneals():
    sds = ready("sds", options={"anneal_after": 150}, seed=0)
    ts, noises = [], []
    for step in range(300):
        ts.append(sds.timestep(step))
        noises.append(sds.noise(X))
    before, after = ts[:150], ts[150:]
    assert min(ts) >= 20 and max(before) <= 980 and max(before) > 900 and min(ts) < 60
    assert max(after) <= 500 and min(after) >= 20
    assert not torch.equal(noises[0], noises[1])
    assert make_method("sds").bounds(10**6) == (20, 980)  # no annealing unless asked


def test_same_seed_same_gradients_other_seed_different():
    g = [ready("sds", seed=seed).gradient(X, 0, make_view()).grad for seed in (7, 7, 8)]
    assert torch.equal(g[0], g[1]) and not torch.equal(g[0], g[2])


# --- NFSD ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [60, 199, 200, 700])
def test_nfsd_rule_switches_delta_d_at_t_200(t):
    nfsd = ready("nfsd")
    eps = torch.randn(X.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    out = nfsd.gradient_at(X, t, eps, make_view())
    a, s = a_s(t)
    z = a * X[0] + s * eps[0]
    e0, ey, en = (hand_eps(z, imgs, t) for imgs in (UNCOND_IMAGES, TEXT_IMAGES, NEG_IMAGES))
    delta_c = ey - e0
    delta_d = e0 if t < 200 else e0 - en
    expected = (1.0 - float(ABAR[t])) * (delta_d + 7.5 * delta_c)
    assert close(out.grad[0], expected)
    other = (1.0 - float(ABAR[t])) * ((e0 - en if t < 200 else e0) + 7.5 * delta_c)
    assert not torch.allclose(out.grad[0], other)  # the two branches really differ here


def test_nfsd_end_to_end_uses_the_sampled_t_and_noise_and_its_negative_prompt():
    nfsd = ready("nfsd", seed=2)
    out = nfsd.gradient(X, 0, make_view())
    assert 20 <= out.t <= 980
    fresh = ready("nfsd", seed=2)
    assert close(out.grad, fresh.gradient_at(X, out.t, out.extras["noise"], make_view()).grad)
    assert type(nfsd).default_negative == NFSD_NEGATIVE_PROMPT
    assert all(METHOD_CLASSES[n].default_negative is None for n in ("sds", "sdi", "fsd"))


def test_one_batched_prior_call_per_prediction():
    for name, conditions in [("sds", (TEXT, UNCOND)), ("nfsd", (TEXT, UNCOND, NEGATIVE)), ("fsd", (TEXT, UNCOND))]:
        prior = make_prior()
        ready(name, prior).gradient(X, 3, make_view())
        assert prior.calls == [conditions], name
    prior = make_prior()
    sdi = ready("sdi", prior, max_steps=100)
    out = sdi.gradient(X, 0, make_view())                     # t = 980: 11 inversion steps + 1 forward
    assert prior.calls == [(TEXT, UNCOND)] * 12 and out.t == 980


def test_at_guidance_scale_1_the_empty_prompt_is_not_computed():
    """e_s = e_0 + 1 (e_y - e_0) = e_y: the text prediction alone, asked for alone."""
    for name in ("sds", "fsd"):
        prior = make_prior()
        method = ready(name, prior, options={"cfg": 1.0}, seed=4)
        out = method.gradient(X, 3, make_view())
        assert prior.calls == [(TEXT,)], name
        if name == "sds":
            a, s = a_s(out.t)
            z = a * X[0] + s * out.extras["noise"][0]
            assert close(out.grad[0], (1.0 - float(ABAR[out.t])) * (hand_cfg(z, out.t, 1.0) - out.extras["noise"][0]))


# --- SDI -------------------------------------------------------------------------------------------

def test_sdi_time_schedule_is_linear_980_to_250():
    sdi = make_method("sdi", max_steps=1000)
    assert [sdi.timestep(s) for s in (0, 500, 1000)] == [980, 615, 250]
    ts = [sdi.timestep(s) for s in range(1001)]
    assert all(a >= b for a, b in zip(ts, ts[1:]))
    short = make_method("sdi", max_steps=500)                  # the authors' int(): 978.54 -> 978, not 979
    assert short.timestep(1) == 978 and short.timestep(499) == 251


def test_sdi_inversion_grid():
    sdi = make_method("sdi")
    assert sdi.inversion_grid(980, 50) == [0, 1, 101, 201, 301, 401, 501, 601, 701, 801, 901, 999]
    assert sdi.inversion_grid(615, 0) == [0, 1, 101, 201, 301, 401, 501, 601, 615]
    assert sdi.inversion_grid(250, 7) == [0, 1, 101, 201, 257]
    assert sdi.inversion_grid(101, 3) == [0, 1, 104]            # 101 itself is not below t
    assert sdi.inversion_grid(950, 99)[-1] == 999               # t + d capped at 999
    # the 10 DDIM timesteps near the start; prior calls = grid length - 1
    assert len(sdi.inversion_grid(980, 0)) - 2 == 10
    assert len(sdi.inversion_grid(980, 0)) - 1 == 11
    assert len(sdi.inversion_grid(850, 0)) - 1 == 10
    assert len(sdi.inversion_grid(250, 0)) - 1 == 4
    offsets = {sdi.offset() for _ in range(2000)}
    assert min(offsets) == 0 and max(offsets) == 99


def hand_ddim_inversion(x, grid, scale):
    z = x.clone()
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        a_c, s_c = a_s(t_cur)
        a_n, s_n = a_s(t_next)
        e = hand_cfg(z, t_cur, scale)
        x0 = (z - s_c * e) / a_c
        z = a_n * x0 + s_n * e
    return z


def test_sdi_inversion_without_entropy_is_ddim_inversion_with_cfg_minus_7_5():
    sdi = ready("sdi", options={"entropy": 0.0})
    grid = [0, 1, 101, 201, 301, 330]
    assert close(sdi.invert(X, grid, make_view())[0], hand_ddim_inversion(X[0], grid, -7.5))


def test_sdi_entropy_noise_has_the_ddpm_posterior_sigma():
    sdi = ready("sdi", seed=5)
    twin = copy.deepcopy(sdi)
    t_cur, t_next = 301, 370
    z = sdi.invert(X, [t_cur, t_next], make_view())[0]
    n = twin.randn_like(X)[0]                                  # the draw invert() made
    ab_c, ab_n = float(ABAR[t_cur]), float(ABAR[t_next])
    sigma = math.sqrt((1 - ab_c) / (1 - ab_n) * (1 - ab_n / ab_c))
    a_c, s_c = a_s(t_cur)
    a_n, s_n = a_s(t_next)
    e = hand_cfg(X[0], t_cur, -7.5)
    expected = a_n * (X[0] - s_c * e) / a_c + s_n * e + 0.3 * sigma * n
    assert close(z, expected)


def test_sdi_gradient_is_x_minus_x0_hat_on_the_inverted_latent():
    sdi = ready("sdi", options={"entropy": 0.0}, max_steps=100, seed=1)
    out = sdi.gradient(X, 50, make_view())
    t, t_inv = out.t, out.extras["t_inverted"]
    assert t == round(1000 * (0.98 - 0.73 * 0.5)) and t <= t_inv <= t + 99
    grid = [0] + [k for k in range(1, 1000, 100) if k < t] + [t_inv]
    z = hand_ddim_inversion(X[0], grid, -7.5)                  # the noisy latent is the inverted z
    assert close(out.extras["z_t"][0], z)
    a, s = a_s(t)
    e_hat = hand_cfg(z, t, 7.5)
    assert close(out.grad[0], X[0] - (z - s * e_hat) / a)
    eps_inv = (z - a * X[0]) / s
    assert close(out.grad[0], (s / a) * (e_hat - eps_inv))    # SDI paper eq. 10, SDS-shaped


# --- FSD -------------------------------------------------------------------------------------------

def fsd_on(size=8, **options):
    prior = FixedImagesPrior({TEXT: smooth_images(2, size, 0), UNCOND: smooth_images(3, size, 0)})
    return ready("fsd", prior, options=options, seed=9)


def test_fsd_world_map_shape_and_wrapping_columns():
    fsd = fsd_on()
    assert fsd.world.shape == (3, 8 + 8, 16 + 8)                # C x (H_buf + h) x (W_buf + w), Theta 180
    assert torch.equal(fsd.world[:, :, 16:], fsd.world[:, :, :8])
    assert fsd_on(theta=90.0).world.shape == (3, 16 + 8, 32 + 8)


@pytest.mark.parametrize("elevation, azimuth, row, col", [
    (0.0, 0.0, 0, 0), (15.0, 0.0, 7, 0), (-10.0, 90.0, 0, 4), (45.0, -90.0, 6, 12), (30.0, 179.0, 6, 7),
    (90.0, 45.0, 4, 2)])
def test_fsd_patch_origin_from_elevation_and_azimuth(elevation, azimuth, row, col):
    assert fsd_on().patch_origin(elevation, azimuth) == (row, col)


def test_fsd_patch_wraps_around_the_right_edge():
    fsd = fsd_on()
    patch = fsd.patches(make_view((0.0,), (-30.0,), size=8))[0]  # col = floor(-1.33 mod 16) = 14
    core = fsd.world[:, 0:8, :16]
    assert torch.equal(patch, torch.cat([core[:, :, 14:16], core[:, :, 0:6]], dim=2))


def test_fsd_noise_is_a_function_of_the_camera():
    fsd = fsd_on()
    x = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    view = make_view((15.0, 15.0), (0.0, 60.0), size=8)
    first, again = fsd.noise(x, view), fsd.noise(x, view)
    assert torch.equal(first, again)                            # same camera, same noise, every step
    assert not torch.allclose(first[0], first[1])               # another azimuth, another patch
    assert torch.equal(first[1], fsd.world[:, 7:15, 2:10].double())  # azimuth 60 -> col 2, elev 15 -> row 7


def test_fsd_mask_from_pooled_opacity_selects_patch_or_background():
    fsd = fsd_on()
    opacity = torch.zeros(1, 1, 16, 16)                         # rendered at twice the prior's size
    opacity[..., :, :8] = 1.0                                   # left half opaque
    opacity[..., 0:2, 8:10] = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # pools to exactly 0.5 -> foreground
    opacity[..., 2:4, 8:10] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # pools to 0.25 -> background
    view = make_view((0.0,), (0.0,), opacity=opacity, size=16)
    mask = fsd.mask(view)[0, 0]
    expected = torch.zeros(8, 8)
    expected[:, :4] = 1.0
    expected[0, 4] = 1.0
    assert torch.equal(mask, expected)
    eps = fsd.noise(torch.zeros(1, 3, 8, 8), view)[0]
    patch = fsd.world[:, 0:8, 0:8]
    assert torch.equal(eps[:, mask == 1], patch[:, mask == 1])
    assert torch.equal(eps[:, mask == 0], fsd.background[:, mask == 0])


def test_fsd_beta_blends_in_fresh_noise():
    fsd = fsd_on(beta=0.25)
    view = make_view(size=8)
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    twin = copy.deepcopy(fsd)
    eps = fsd.noise(x, view)
    fixed = fsd_on().noise(x, view)
    assert close(eps, 0.5 * fixed + math.sqrt(0.75) * twin.randn_like(x))


def test_fsd_gradient_and_decreasing_schedule():
    fsd = fsd_on(size=4)
    fsd.max_steps = 100
    assert [fsd.timestep(s) for s in (0, 50, 100)] == [980, 500, 20]
    prior = FixedImagesPrior({TEXT: TEXT_IMAGES, UNCOND: UNCOND_IMAGES})
    fsd.setup(prior)
    view = make_view()
    out = fsd.gradient(X, 30, view)
    t = out.t
    eps = fsd.noise(X, view)[0]
    a, s = a_s(t)
    assert t == 692 and torch.equal(out.extras["noise"][0], eps)
    expected = (1.0 - float(ABAR[t])) * (hand_cfg(a * X[0] + s * eps, t, 7.5) - eps)
    assert close(out.grad[0], expected)


def test_fsd_state_resumes_the_same_noise():
    a, b = fsd_on(), make_method("fsd", seed=123)
    b.load_state_dict(a.state_dict())
    b.setup(a.prior)                                            # setup after a resume keeps the loaded maps
    view = make_view((20.0,), (33.0,), size=8)
    x = torch.zeros(1, 3, 8, 8)
    assert torch.equal(a.noise(x, view), b.noise(x, view))
    c = fsd_on()
    c.load_state_dict(a.state_dict())                           # or load after setup
    assert torch.equal(c.noise(x, view), a.noise(x, view))


# --- DDIM ------------------------------------------------------------------------------------------

def test_ddim_grid_and_step_is_invertible():
    assert ddim_timesteps(50)[:3] == [1, 21, 41] and ddim_timesteps(50)[-1] == 981
    assert ddim_timesteps(10) == list(range(1, 1000, 100))
    e = torch.randn(3, 4, 4, dtype=torch.float64)
    z = torch.randn(3, 4, 4, dtype=torch.float64)
    there = ddim_step(z, e, ABAR[101], ABAR[601])
    assert close(ddim_step(there, e, ABAR[601], ABAR[101]), z)


def test_ddim_sample_matches_a_hand_ddim_loop():
    prior = FixedImagesPrior({TEXT: TEXT_IMAGES, UNCOND: UNCOND_IMAGES})
    x_T = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = ddim_sample(prior, x_T, make_view(), steps=5, cfg=7.5)
    z = x_T[0]
    grid = [801, 601, 401, 201, 1]
    for i, t in enumerate(grid):
        a, s = a_s(t)
        e = hand_cfg(z, t, 7.5)
        x0 = (z - s * e) / a
        z = x0 if i == len(grid) - 1 else a_s(grid[i + 1])[0] * x0 + a_s(grid[i + 1])[1] * e
    assert close(got[0], z)


# --- the registry ----------------------------------------------------------------------------------

def test_make_method_defaults_overrides_and_descriptions():
    assert set(METHOD_CLASSES) == {"sds", "nfsd", "sdi", "fsd"}
    assert [make_method(n).cfg for n in ("sds", "nfsd", "sdi", "fsd")] == [100.0, 7.5, 7.5, 7.5]
    method = make_method("sdi", cfg=5, options={"entropy": 0.0, "cfg": 9.0}, max_steps=77, seed=3)
    assert (method.cfg, method.entropy, method.max_steps, method.seed) == (5, 0.0, 77, 3)
    described = describe_methods()
    assert set(described) == set(METHOD_CLASSES)
    assert all(text and "\n" not in text for text in described.values())


@pytest.mark.parametrize("name, kwargs, needle", [
    ("dreamfusion", {}, "unknown method 'dreamfusion': use one of sds, nfsd, sdi, fsd"),
    ("sds", {"options": {"tmin": 0.1}}, "sds has no option.*tmin.*t_min \\(default 0.02\\)"),
    ("sds", {"options": {"t_min": 2}}, "sds option t_min = 2 is out of range"),
    ("sds", {"options": {"t_min": 0.6, "t_max": 0.5}}, "t_min = 0.6 is above"),
    ("sds", {"options": {"weighting": "snr"}}, "weighting = 'snr' is not allowed: use one of 'sds', 'uniform'"),
    ("sds", {"options": {"anneal_after": -1}}, "anneal_after = -1 is out of range"),
    ("nfsd", {"cfg": "high"}, "nfsd option cfg must be a number"),
    ("sdi", {"options": {"inversion_steps": 0}}, "inversion_steps = 0 is out of range"),
    ("sdi", {"options": {"t_end": 0.99}}, "t_end = 0.99 is above t_start"),
    ("fsd", {"options": {"beta": 1.5}}, "beta = 1.5 is out of range"),
    ("fsd", {"options": {"theta": 2.0}}, "theta = 2.0 is out of range"),
    ("fsd", {"options": {"theta": "wide"}}, "theta must be a number"),
    ("fsd", {"max_steps": 0}, "max_steps = 0 is out of range"),
])
def test_make_method_errors_name_the_problem_and_the_fix(name, kwargs, needle):
    with pytest.raises(UserError, match=needle):
        make_method(name, **kwargs)


def test_gradient_loss_gives_g_over_batch_on_x():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    gradient_loss(x, g).backward()
    assert close(x.grad, g / 2)
