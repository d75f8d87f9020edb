"""Priors: the built-in exact shapes prior and Stable Diffusion, behind one interface (base.Prior)."""
from __future__ import annotations

import torch

from .base import CONDITIONS, NEGATIVE, NFSD_NEGATIVE_PROMPT, TEXT, UNCOND, NoiseSchedule, Prior, View

SHAPES = "shapes"


def load_prior(name: str, device: torch.device | str = "cpu", resolution: int = 64, offline: bool = False) -> Prior:
    """'shapes' -> the built-in exact prior rendering at `resolution`; anything else is a diffusers
    Stable Diffusion model id (downloaded on first use unless offline) or a local folder."""
    if name == SHAPES:
        from .shapes import ShapesPrior
        return ShapesPrior(resolution=resolution, device=device)
    from .stable_diffusion import StableDiffusionPrior
    return StableDiffusionPrior.load(name, device=device, offline=offline)


__all__ = ["CONDITIONS", "NEGATIVE", "NFSD_NEGATIVE_PROMPT", "TEXT", "UNCOND", "NoiseSchedule", "Prior",
           "View", "SHAPES", "load_prior"]
