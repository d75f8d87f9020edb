"""Priors: the built-in exact shapes prior and Stable Diffusion, behind one interface (base.Prior)."""
from __future__ import annotations

import torch

from shared.schema import SHAPES_PRIOR, SettingError, check_prior_options

from ..errors import UserError

from .base import CONDITIONS, NEGATIVE, NFSD_NEGATIVE_PROMPT, TEXT, UNCOND, NoiseSchedule, Prior, View

SHAPES = SHAPES_PRIOR


def _shapes_prior(device: torch.device | str, resolution: int) -> Prior:
    from .shapes import ShapesPrior
    return ShapesPrior(resolution=resolution, device=device)


# The priors that load by name, without weights: name -> (device, resolution) -> Prior. Any other name
# is a Stable Diffusion model id or folder.
BUILTIN_PRIORS = {SHAPES: _shapes_prior}


def load_prior(name: str, device: torch.device | str = "cpu", resolution: int = 64, offline: bool = False,
               options: dict | None = None) -> Prior:
    """'shapes' -> the built-in exact prior rendering at `resolution`; anything else is a diffusers
    Stable Diffusion model id (downloaded on first use unless offline) or a local folder, with
    `options` from shared/schema.py SD_OPTIONS (e.g. {"perp_neg": True})."""
    options = options or {}
    if name in BUILTIN_PRIORS:
        if options:
            raise UserError(f"the built-in {name!r} prior takes no options (got {', '.join(options)}): "
                            "prior options are for Stable Diffusion")
        return BUILTIN_PRIORS[name](device, resolution)
    try:
        options = check_prior_options(options)
    except SettingError as error:
        raise UserError(error.message, error.field) from None
    from .stable_diffusion import StableDiffusionPrior
    return StableDiffusionPrior.load(name, device=device, offline=offline, **options)


__all__ = ["CONDITIONS", "NEGATIVE", "NFSD_NEGATIVE_PROMPT", "TEXT", "UNCOND", "NoiseSchedule", "Prior",
           "View", "SHAPES", "BUILTIN_PRIORS", "load_prior"]
