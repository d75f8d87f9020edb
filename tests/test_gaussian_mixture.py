"""The exact Gaussian-mixture prior, and the 2D behaviour of the methods measured on it
(docs/methods.md): tests that fail if a method stops behaving as measured. Each runs in seconds:
several seeds run as one batch of independent images (Adam acts per pixel, the prior per image)."""
import math

import pytest
import torch

from backend.errors import UserError
from backend.image import compare_2d, distill_image, flow_step, image_view
from backend.methods import make_method
from backend.methods.ddim import ddim_sample, ddim_timesteps
from backend.priors.base import NEGATIVE, NFSD_NEGATIVE_PROMPT, TEXT, UNCOND
from backend.priors.gaussian_mixture import GaussianMixturePrior, blurred

SEEDS = 6


@pytest.fixture(scope="module")
def prior():
    torch.set_num_threads(1)
    return GaussianMixturePrior()


@pytest.fixture(scope="module")
def view(prior):
    return image_view(prior)


def a_s(prior, t, n):
    abar = prior.schedule.alphas_cumprod[t]
    return abar.sqrt().expand(n), (1 - abar).sqrt().expand(n)


# --- the prior is exact --------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0, 1, 120, 500, 999])
def test_posterior_mean_is_tweedie_on_autograd_of_log_p_t(prior, t):
    z = torch.randn(4, 768, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
    z[:2] = z[:2] * 0.3 + prior.classes.mu[:2] * prior.schedule.alphas_cumprod[t].sqrt()  # near two classes
    for gaussians in (prior.classes, prior.classes.select([2]), blurred(prior.classes)):
        a, s = a_s(prior, t, len(z))
        z_ = z.clone().requires_grad_(True)
        score, = torch.autograd.grad(gaussians.log_density(z_, a, s).sum(), z_)
        tweedie = (z + s[:, None] ** 2 * score) / a[:, None]                    # E[x0 | z] = (z + s^2 grad) / a
        assert torch.allclose(gaussians.posterior_mean(z, a, s), tweedie, atol=1e-9, rtol=1e-9)


def test_conditions_text_uncond_and_each_negative(prior, view):
    z = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([400, 400])
    prior.set_prompts("a picture of class 2", None)
    e_text, e_uncond, e_neg = prior.predict_noise(z, t, (TEXT, UNCOND, NEGATIVE), view)
    a, s = a_s(prior, 400, 2)
    expected = (z.flatten(1) - a[:, None] * prior.classes.select([2]).posterior_mean(z.flatten(1), a, s)) / s[:, None]
    assert torch.allclose(e_text.flatten(1), expected) and torch.equal(e_neg, e_uncond)
    assert not torch.allclose(e_text, e_uncond)
    prior.set_prompts("class 2", "class 1")
    assert torch.allclose(prior.predict_noise(z, t, (NEGATIVE,), view)[0],
                          (prior.set_prompts("class 1") or prior.predict_noise(z, t, (TEXT,), view))[0])
    prior.set_prompts("class 2", NFSD_NEGATIVE_PROMPT)
    assert prior.describe()["negative"] == "blurred mixture"
    with pytest.raises(UserError, match="class 0, class 1, class 2, class 3"):
        prior.set_prompts("a red cube")
    with pytest.raises(UserError, match="no 'class 7'"):
        prior.set_prompts("class 7")


def test_metrics_of_true_samples_and_of_the_class_mean(prior):
    prior.set_prompts("class 1")
    samples = prior.sample(4000, generator=torch.Generator().manual_seed(0))
    assert abs(float(prior.detail(samples).mean()) - 1.0) < 0.05            # E[detail] = 1 for true samples
    assert float(prior.off_manifold(samples).max()) < 1e-9
    assert bool((prior.class_reached(samples) == 1).all())
    mean = prior.classes.mu[1].view(1, 3, 16, 16)
    assert float(prior.detail(mean)) == 0.0 and float(prior.off_manifold(mean)) < 1e-12
    pushed = mean + 0.5 * torch.randn(1, 3, 16, 16, dtype=torch.float64)    # noise leaves the subspace
    assert float(prior.off_manifold(pushed)) > 5.0 and int(prior.class_reached(pushed)) == 1


# --- DDIM ----------------------------------------------------------------------------------------

def test_ddim_grid_up_to_1000_steps_and_a_1000_step_sample(prior, view):
    assert ddim_timesteps(1000) == list(range(1000))
    assert ddim_timesteps(999)[-1] == 999 and ddim_timesteps(500)[-1] == 999 and ddim_timesteps(50)[-1] == 981
    for steps in (0, 1001, 2000):
        with pytest.raises(UserError, match="DDIM steps"):
            ddim_timesteps(steps)
    prior.set_prompts("class 0")
    x = ddim_sample(prior, torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), view,
                    steps=1000)
    assert float(prior.off_manifold(x).max()) < 1e-4 and bool((prior.class_reached(x) == 0).all())


# --- the methods, as measured (docs/methods.md) ----------------------------------------------------

def test_fsd_with_proposition_1_steps_follows_ddim_from_the_same_noise(prior):
    for seed in (0, 1):
        out = compare_2d(prior, ("fsd",), steps=300, seed=seed, prompt="class 0")
        assert float((out["fsd"] - out["ddim"]).norm()) < 0.1, seed
        assert float(prior.off_manifold(out["fsd"])) < 0.01
    adam = compare_2d(prior, ("fsd",), steps=300, seed=0, prompt="class 0", optimizer="adam", lr=0.03)
    assert float((adam["fsd"] - adam["ddim"]).norm()) > 0.5                 # why Adam is not FSD's 2D default


def test_flow_step_sizes_sum_to_sigma_at_the_start(prior):
    fsd = make_method("fsd", max_steps=40)
    fsd.setup(prior)
    total = sum(flow_step(prior, fsd, k) * (1.0 - float(prior.schedule.alphas_cumprod[fsd.timestep(k)]))
                for k in range(40))
    abar = float(prior.schedule.alphas_cumprod[980])
    assert math.isclose(total, math.sqrt((1 - abar) / abar), rel_tol=1e-9)  # the sigma steps telescope to 0
    with pytest.raises(UserError, match="flow"):
        distill_image(prior, make_method("sds"), 2, optimizer="flow")


def run_batch(prior, view, name, steps, lr=None, cfg=None, options=None, negative=None, tail=0):
    """SEEDS independent images as one batch; with tail, also the mean of the last `tail` iterates."""
    prior.set_prompts("class 0", negative)
    iterates = []
    keep = (lambda step, x, out: iterates.append(x.clone()) if step >= steps - tail else None) if tail else None
    x = distill_image(prior, make_method(name, cfg, options, max_steps=steps, seed=3), steps, view, lr,
                      init=torch.zeros(SEEDS, 3, 16, 16), on_step=keep)
    return x, (torch.stack(iterates).mean(0) if tail else None)


def spread(x):
    return float(torch.pdist(x.flatten(1).double()).mean())


def test_sds_at_cfg_7_5_seeks_one_image_for_every_seed(prior, view):
    # true samples of a class lie about 2 apart; SDS-7.5's seeds end at one point (their time
    # averages within 1 of each other), off the class's subspace (CFG pushes away from the other classes)
    x, averaged = run_batch(prior, view, "sds", 300, cfg=7.5, tail=50)
    assert spread(averaged) < 0.5 * spread(prior.sample(200, 0))
    assert float(prior.off_manifold(averaged).min()) > 1.0
    assert bool((prior.class_reached(x) == 0).all())


def test_sdi_contracts_to_the_class_mean_at_its_authors_lr_and_stays_finite_at_0_1(prior, view):
    x, _ = run_batch(prior, view, "sdi", 150, lr=0.01)                      # the authors' Adam
    assert bool(torch.isfinite(x).all()) and float(x.abs().max()) < 1.0     # the data lies within about 0.9
    assert float(prior.off_manifold(x).max()) < 0.2 and bool((prior.class_reached(x) == 0).all())
    assert float(prior.detail(x).max()) < 0.1                                # the class mean, not a sample
    # at lr 0.1 it leaves the data (docs/methods.md: detail 76 after 500 steps) but never overflows
    x, _ = run_batch(prior, view, "sdi", 150, lr=0.1)
    assert bool(torch.isfinite(x).all()) and float(x.abs().max()) < 10.0


def test_nfsd_with_another_class_as_negative_runs_away(prior, view):
    x_mixture, _ = run_batch(prior, view, "nfsd", 200, negative="")
    x_class, _ = run_batch(prior, view, "nfsd", 200, negative="class 1")
    assert float(prior.off_manifold(x_class).mean()) > 2 * float(prior.off_manifold(x_mixture).mean())
