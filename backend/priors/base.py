"""The prior interface: what the distillation loop needs from a text-to-image diffusion model.

A prior works in its own space ("x"): Stable Diffusion's 4x64x64 latents, or RGB in [-1, 1] for the
built-in exact prior. The loop renders, calls `encode` (differentiable), hands x to a method, and
the method asks the prior for noise predictions. The loop never knows which prior it has.

To bring your own prior, subclass `Prior`, implement the abstract methods, and pass an instance to
`backend.generate(..., prior=my_prior)` (README, "Bring your own prior").
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..cameras import Cameras

# The condition names a method may ask for in one batched prediction.
TEXT, UNCOND, NEGATIVE = "text", "uncond", "negative"
CONDITIONS = (TEXT, UNCOND, NEGATIVE)

# NFSD's negative prompt (docs/methods.md, NFSD). Also the default negative prompt where one is wanted.
NFSD_NEGATIVE_PROMPT = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
                        "low-resolution, gloomy")


class NoiseSchedule:
    """Stable Diffusion's DDPM schedule: 1000 steps, scaled_linear betas 0.00085 .. 0.012.
    z_t = a_t x + s_t eps with a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t)."""

    num_train_timesteps = 1000

    def __init__(self, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000):
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
        self.num_train_timesteps = steps
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # float64 on the CPU, [T]

    def abar(self, t: torch.Tensor | int, like: torch.Tensor | None = None) -> torch.Tensor:
        """alphas_cumprod[t], shaped [B, 1, 1, 1] for a [B] t, in the dtype/device of `like`."""
        t = torch.as_tensor(t).long().cpu()
        value = self.alphas_cumprod[t]
        if like is not None:
            value = value.to(device=like.device, dtype=like.dtype)
            value = value.reshape(-1, *([1] * (like.dim() - 1))) if value.dim() else value
        return value

    def a_s(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.abar(t, like)
        return abar.sqrt(), (1.0 - abar).sqrt()

    def add_noise(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        a, s = self.a_s(t, x)
        return a * x + s * eps


@dataclass
class View:
    """What the 3D loop knows about the picture being scored. Stable Diffusion uses only the camera
    angles (for the view-dependent prompt); the exact prior renders its objects for this view."""

    cameras: Cameras
    shading: str                  # "albedo" | "lambertian" | "textureless" (backend.shading)
    light_positions: torch.Tensor  # [B, 3] world space
    background: torch.Tensor       # [B, 3, H, W] in [0, 1]: the background the model rendered (detached)
    opacity: torch.Tensor          # [B, 1, H, W] in [0, 1]: the model's rendered opacity (detached)


def rgb_to_signed(rgb: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Renders in [0, 1] -> [-1, 1] at `size` (H, W): the space of the exact priors (differentiable)."""
    if tuple(rgb.shape[-2:]) != tuple(size):
        rgb = F.interpolate(rgb, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return rgb * 2.0 - 1.0


def signed_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> displayable [0, 1] (no gradient)."""
    return ((x.detach() + 1.0) * 0.5).clamp(0.0, 1.0)


class Prior(ABC):
    """A text-to-image diffusion model as the distillation loop sees it."""

    schedule: NoiseSchedule
    #: (C, H, W) of the prior's space; renders are encoded to this size.
    latent_shape: tuple[int, int, int]
    #: the render resolution the prior wants as encoder input (e.g. 512 for SD through the VAE).
    render_resolution: int
    name: str = "prior"
    #: the guidance scale a run uses when the user sets none; None: the method's own default (its
    #: authors' value, chosen for Stable Diffusion). An exact prior needs none (docs/quality.md, "Guidance").
    default_cfg: float | None = None

    @abstractmethod
    def set_prompts(self, prompt: str, negative: str | None = None, view_dependent: bool = True) -> None:
        """Encode and cache the conditions for one run. Raise UserError for a prompt it cannot use."""

    @abstractmethod
    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """Render [B, 3, H, W] in [0, 1] -> x [B, C, h, w] in the prior's space. Differentiable."""

    @abstractmethod
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """x -> RGB [B, 3, H, W] in [0, 1], for previews. No gradient."""

    @abstractmethod
    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, conditions: Sequence[str],
                      view: View) -> torch.Tensor:
        """The noise predictions e(z_t, t, y) for each condition in `conditions` (names from
        CONDITIONS), computed in ONE batched call. z_t [B, C, h, w], t [B] integer timesteps.
        Returns [len(conditions), B, C, h, w]. Never builds an autograd graph."""

    def describe(self) -> dict:
        """What report.json records about this prior (name, model id, hash, dtype...)."""
        return {"name": self.name}
