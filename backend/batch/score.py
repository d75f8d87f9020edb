"""A score for a finished item from the prior itself, for priors with no ground truth (Stable Diffusion).

The score is the prior's mean denoising loss on the item's turntable views,
    L = mean over views v, timesteps t of || eps_hat(a_t x_v + s_t eps, t, y_v) - eps ||^2,
with fixed noise (the same eps for every item, so items are compared on equal terms) and y_v the
view-dependent prompt of view v. Lower is better. Why this one: the diffusion loss bounds
-log p(x | y) (the DDPM evidence bound), so it asks the very model being distilled how likely each
view is under the prompt; it needs no second model (CLIP) and costs len(TIMESTEPS) prior calls per
view, a few training steps' worth. Scoring each view with its own "front/side/back view" prompt
also penalises a face on the back (the Janus problem) a little. It favours plain images: on the
shapes prior, where the ground-truth IoU is known, it ranked seeds well for a cube and poorly for a
torus (docs/batch.md, bench/bench_batch.py --score).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..cameras import turntable_cameras
from ..priors import TEXT, Prior, View

TIMESTEPS = (200, 500, 800)   # low, middle and high noise of the 1000-step schedule
VIEWS = 8                     # the turntable's views
NOISE_SEED = 0


@torch.no_grad()
def denoising_loss(prior: Prior, images: torch.Tensor, views: Sequence[View],
                   timesteps: Sequence[int] = TIMESTEPS, seed: int = NOISE_SEED) -> float:
    """The mean denoising loss of `images` [N, 3, H, W] in [0, 1], image i seen from views[i]."""
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for image, view in zip(images, views):
        x = prior.encode(image[None])
        for t in timesteps:
            eps = torch.randn(x.shape, generator=generator).to(x)
            z_t = prior.schedule.add_noise(x, eps, t)
            eps_hat = prior.predict_noise(z_t, torch.tensor([t], device=x.device), [TEXT], view)[0]
            total += float(((eps_hat.float() - eps.float()) ** 2).mean())
            count += 1
    return total / count


@torch.no_grad()
def prior_score(model, prior: Prior, resolution: int, views: int = VIEWS) -> dict[str, float]:
    """{"prior_loss": the denoising loss of a trained field's turntable (lit from the camera side, as
    turntable.png), "coverage": its mean opacity}. The prior must have the item's prompts set (train
    leaves them set)."""
    device = next(model.parameters()).device
    cameras = turntable_cameras(views, resolution, resolution, device=device)
    images, seen = [], []
    model.eval()
    for i in range(views):
        camera, light = cameras[i:i + 1], cameras.positions[i:i + 1] * 1.5
        render = model.render(camera, "lambertian", light)
        images.append(render.rgb.permute(0, 3, 1, 2)[0])
        seen.append(View(cameras=camera, shading="lambertian", light_positions=light,
                         background=render.background.permute(0, 3, 1, 2), opacity=render.opacity.permute(0, 3, 1, 2)))
    coverage = torch.stack([view.opacity.mean() for view in seen]).mean()
    return {"prior_loss": denoising_loss(prior, torch.stack(images), seen), "coverage": float(coverage)}
