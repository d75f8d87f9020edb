"""The papers' 2D experiment on an exact prior over two 3x16x16 images, where the truth is known:
FSD with fixed noise follows DDIM (FSD paper, Proposition 1), SDI lands on a data image, and SDS at
CFG 100 overshoots the data (over-saturation)."""
import numpy as np
import torch

from backend.image import compare_2d, compare_methods, distill_image, distill_prompt_image, image_view
from backend.methods import make_method
from backend.priors.base import NEGATIVE, TEXT, UNCOND
from backend.priors.exact import FixedImagesPrior

STEPS = 300


def two_images(size=16):
    g = torch.Generator().manual_seed(0)
    low = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False).clamp(-1, 1)


A, B = two_images()
GAP = float((A - B).norm())


def test_fsd_follows_ddim_of_its_noise_and_seeds_reach_both_images():
    prior = FixedImagesPrior({TEXT: torch.stack([A, B]), UNCOND: torch.stack([A, B])})
    reached = set()
    for seed in range(4):
        out = compare_2d(prior, ("fsd",), steps=STEPS, seed=seed)
        fsd, ddim = out["fsd"][0], out["ddim"][0]
        assert float((fsd - ddim).norm()) < 0.02 * GAP, seed       # Proposition 1
        nearest = min((float((ddim - image).norm()), i) for i, image in enumerate((A, B)))
        assert nearest[0] < 0.02 * GAP                             # DDIM samples a data image
        reached.add(nearest[1])
    assert reached == {0, 1}                                       # different noise, different image


def test_sdi_lands_on_the_data_while_sds_at_cfg_100_overshoots_it():
    # the prompt means A; the empty prompt means A or B, so CFG pushes away from B
    prior = FixedImagesPrior({TEXT: A[None], UNCOND: torch.stack([A, B]), NEGATIVE: B[None]})
    out = compare_2d(prior, ("sdi", "sds", "fsd"), steps=STEPS, seed=0)
    assert float((out["sdi"][0] - A).norm()) < 0.02 * GAP
    assert float((out["fsd"][0] - A).norm()) < 0.02 * GAP
    sds = out["sds"][0]
    beyond = float(((sds - A) * (A - B)).sum()) / GAP ** 2        # how far past A, away from B
    assert beyond > 0.2 and float((sds - A).norm()) > 0.25 * GAP
    assert float(sds.std()) > 1.2 * float(A.std())                # more contrast than the data: saturated


def test_distill_image_runs_the_method_schedule_over_the_given_steps():
    prior = FixedImagesPrior({TEXT: A[None], UNCOND: torch.stack([A, B])})
    method = make_method("fsd", max_steps=1000)
    seen = []
    x = distill_image(prior, method, 20, on_step=lambda step, x, out: seen.append((step, out.t)))
    assert method.max_steps == 20 and [s for s, _ in seen] == list(range(20))
    assert seen[0][1] == 980 and seen[-1][1] == round(1000 * (0.98 - 0.96 * 19 / 20))
    assert x.shape == (1, 3, 16, 16) and not x.requires_grad
    view = image_view(prior)
    assert float(view.cameras.azimuth[0]) == 0.0 and view.opacity.min() == 1 and view.background.min() == 1


def test_prompt_image_and_comparison_picture():
    prior = FixedImagesPrior({TEXT: A[None], UNCOND: torch.stack([A, B]), NEGATIVE: B[None]})
    image = distill_prompt_image("anything", method="sdi", steps=30, prior=prior, seed=1)
    assert image.shape == (3, 16, 16) and 0 <= float(image.min()) and float(image.max()) <= 1
    picture = compare_methods("anything", prior=prior, steps=10, methods=("sds", "nfsd"))
    assert isinstance(picture, np.ndarray) and picture.shape[1] == 3 * 256  # sds, nfsd, ddim side by side
