"""Priors: the built-in exact shapes prior and Stable Diffusion, behind one interface (base.Prior)."""
from __future__ import annotations

import torch

from ..errors import UserError

from .base import CONDITIONS, NEGATIVE, NFSD_NEGATIVE_PROMPT, TEXT, UNCOND, NoiseSchedule, Prior, View

SHAPES = "shapes"


SD_OPTIONS = ("perp_neg", "latent_mode", "attention_slicing", "vae_tiling", "cpu_offload", "cuda_graphs",
              "vae_channels_last")


def load_prior(name: str, device: torch.device | str = "cpu", resolution: int = 64, offline: bool = False,
               options: dict | None = None) -> Prior:
    """'shapes' -> the built-in exact prior rendering at `resolution`; anything else is a diffusers
    Stable Diffusion model id (downloaded on first use unless offline) or a local folder, with
    `options` from SD_OPTIONS (e.g. {"perp_neg": True})."""
    options = options or {}
    if name == SHAPES:
        if options:
            raise UserError(f"the built-in 'shapes' prior takes no options (got {', '.join(options)}): "
                            "prior options are for Stable Diffusion")
        from .shapes import ShapesPrior
        return ShapesPrior(resolution=resolution, device=device)
    unknown = sorted(set(options) - set(SD_OPTIONS))
    if unknown:
        raise UserError(f"unknown prior option(s) {', '.join(unknown)}: Stable Diffusion takes {', '.join(SD_OPTIONS)}")
    from .stable_diffusion import StableDiffusionPrior
    return StableDiffusionPrior.load(name, device=device, offline=offline, **options)


__all__ = ["CONDITIONS", "NEGATIVE", "NFSD_NEGATIVE_PROMPT", "TEXT", "UNCOND", "NoiseSchedule", "Prior",
           "View", "SHAPES", "load_prior"]
