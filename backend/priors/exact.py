"""Priors whose denoiser is known exactly: the data is a finite set of images per condition.

For a finite set {x_k}, the optimal denoiser is the posterior mean (docs/design.md, "The built-in exact prior"):
    x0_hat(z_t) = sum_k softmax_k(-|z_t - a_t x_k|^2 / (2 s_t^2)) x_k,   eps_hat = (z_t - a_t x0_hat) / s_t.
So every method's terms mean what they mean on Stable Diffusion, but the truth is known.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Sequence

import torch

from ..errors import UserError
from .base import NoiseSchedule, Prior, View, rgb_to_signed, signed_to_rgb


def posterior_mean(z_t: torch.Tensor, candidates: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x0_hat for z_t [B, C, H, W] over candidates [K, B, C, H, W]; a, s broadcastable to [B, 1, 1, 1]."""
    d2 = ((z_t[None] - a[None] * candidates) ** 2).flatten(2).sum(-1)       # [K, B]
    logits = -d2 / (2.0 * (s.reshape(1, -1) ** 2))
    weights = torch.softmax(logits, dim=0)                                    # [K, B]
    return torch.einsum("kb,kbchw->bchw", weights, candidates)


class ExactPrior(Prior):
    """An RGB-space prior (x = 2 * rgb - 1) with an exact posterior-mean denoiser.
    Subclasses say which images each condition means for a view, via `candidates`."""

    def __init__(self, resolution: int, channels: int = 3):
        self.schedule = NoiseSchedule()
        self.latent_shape = (channels, resolution, resolution)
        self.render_resolution = resolution

    @abstractmethod
    def candidates(self, condition: str, view: View) -> torch.Tensor:
        """The images x_k (in [-1, 1]) that `condition` means for this view: [K, B, C, H, W]."""

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        return rgb_to_signed(rgb, self.latent_shape[1:])

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return signed_to_rgb(x)

    @torch.no_grad()
    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, conditions: Sequence[str],
                      view: View) -> torch.Tensor:
        a, s = self.schedule.a_s(t, z_t)
        out = []
        for condition in conditions:
            x0_hat = posterior_mean(z_t, self.candidates(condition, view).to(z_t), a, s)
            out.append((z_t - a * x0_hat) / s)
        return torch.stack(out)


class FixedImagesPrior(ExactPrior):
    """An exact prior over fixed images that ignore the view: the smallest prior there is, used for
    2D experiments and as the worked example of "Bring your own prior" in the README."""

    name = "fixed-images"

    def __init__(self, images: dict[str, torch.Tensor]):
        """images: condition name ("text", "uncond", "negative") -> [K, C, H, W] in [-1, 1]."""
        first = next(iter(images.values()))
        super().__init__(first.shape[-1], first.shape[-3])
        self.images = images

    def set_prompts(self, prompt: str, negative: str | None = None, view_dependent: bool = True) -> None:
        pass  # the images are the conditions

    def candidates(self, condition: str, view: View) -> torch.Tensor:
        if condition not in self.images:
            raise UserError(f"this prior has no images for condition {condition!r}; it has {sorted(self.images)}")
        images = self.images[condition]
        return images[:, None].expand(-1, len(view.cameras), -1, -1, -1)
