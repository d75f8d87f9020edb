"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), eta = 0: the 2D reference sampler,
and the single DDIM step that SDI's inversion runs backwards.

Formula (12) of the DDIM paper with sigma = 0, written on abar (alphas_cumprod):
    x0   = (z - sqrt(1 - abar_cur) e) / sqrt(abar_cur)            "predicted x0"
    z'   = sqrt(abar_next) x0 + sqrt(1 - abar_next) e             "direction pointing to x_t"
The same step with abar_next < abar_cur inverts DDIM (SDI's eq. 2 run from images to noise).
"""
from __future__ import annotations

import torch

from ..priors.base import Prior, View
from .base import NUM_TIMESTEPS, check_range, guided_noise

# SD's DDIM config: "leading" timestep spacing with steps_offset 1 (timesteps 1, 21, ..., 981 for 50 steps).
STEPS_OFFSET = 1


def ddim_timesteps(steps: int) -> list[int]:
    """The DDIM grid in increasing order: 1, 1 + T/steps, ..., e.g. 1, 101, ..., 901 for 10 steps.
    1 <= steps <= T. With T steps the offset would put the top at t = T, past the table, so that grid
    is 0 .. T-1 (every training timestep)."""
    check_range("DDIM steps", steps, 1, NUM_TIMESTEPS, integer=True)
    ratio = NUM_TIMESTEPS // steps
    offset = STEPS_OFFSET if (steps - 1) * ratio + STEPS_OFFSET < NUM_TIMESTEPS else 0
    return [k * ratio + offset for k in range(steps)]


def predicted_x0(z: torch.Tensor, e: torch.Tensor, abar: torch.Tensor | float) -> torch.Tensor:
    """x0 = (z - sqrt(1 - abar) e) / sqrt(abar)  (DDIM formula (12), "predicted x0")."""
    abar = torch.as_tensor(abar, dtype=z.dtype, device=z.device)
    return (z - (1.0 - abar).sqrt() * e) / abar.sqrt()


def ddim_step(z: torch.Tensor, e: torch.Tensor, abar_cur: torch.Tensor | float,
              abar_next: torch.Tensor | float) -> torch.Tensor:
    """One deterministic DDIM step from noise level abar_cur to abar_next (either direction):
    denoise to x0 with the prediction e, then re-noise to abar_next with the same e (formula (12), eta 0)."""
    abar_next = torch.as_tensor(abar_next, dtype=z.dtype, device=z.device)
    return abar_next.sqrt() * predicted_x0(z, e, abar_cur) + (1.0 - abar_next).sqrt() * e


@torch.no_grad()
def ddim_sample(prior: Prior, x_T: torch.Tensor | None, view: View, steps: int = 50, cfg: float = 7.5,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Plain DDIM sampling (eta 0) from x_T at the top of the grid (t = 981 for 50 steps) down to the
    clean image. x_T: [B, C, h, w] starting noise, or None to draw it (one image) from `generator`.
    The last step lands on abar = 1, i.e. it returns that step's predicted x0."""
    if x_T is None:
        x_T = torch.randn((1, *prior.latent_shape), generator=generator)
    z = x_T
    grid = ddim_timesteps(steps)[::-1]
    for i, t in enumerate(grid):
        abar_cur = prior.schedule.abar(t, z)
        abar_next = prior.schedule.abar(grid[i + 1], z) if i + 1 < len(grid) else 1.0
        z = ddim_step(z, guided_noise(prior, z, t, view, cfg), abar_cur, abar_next)
    return z
