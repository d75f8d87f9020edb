"""The score distillation methods (SDS, NFSD, SDI, FSD) by name, and DDIM, the 2D reference sampler.

Each method is a timestep schedule + a noise source + a gradient rule (base.py); `make_method`
builds one from its name and user options with clear errors.
"""
from __future__ import annotations

from typing import Any

from ..errors import UserError
from .base import GradientOutput, Method, gradient_loss
from .ddim import ddim_sample
from .fsd import FSD
from .nfsd import NFSD
from .sdi import SDI
from .sds import SDS

METHODS: dict[str, type[Method]] = {"sds": SDS, "nfsd": NFSD, "sdi": SDI, "fsd": FSD}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name]


def make_method(name: str, cfg: float | None = None, options: dict[str, Any] | None = None,
                max_steps: int = 1000, seed: int = 0) -> Method:
    """The method `name` with its authors' defaults, then `options` (e.g. {"weighting": "uniform"}),
    then `cfg` when given. Raises UserError for an unknown method, an unknown option or a bad value."""
    cls = method_class(name)
    options = dict(options or {})
    valid = cls.options()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(f"{name} has no option(s) {', '.join(unknown)}: its options are "
                        f"{', '.join(f'{k} (default {v!r})' for k, v in valid.items())}")
    if cfg is not None:
        options["cfg"] = cfg
    return cls(**options, max_steps=max_steps, seed=seed)  # __post_init__ validates every value


def describe_methods() -> dict[str, str]:
    """name -> one-line description (the CLI help and the Blender panel show them)."""
    return {name: cls.description for name, cls in METHODS.items()}


__all__ = ["METHODS", "FSD", "NFSD", "SDI", "SDS", "GradientOutput", "Method", "ddim_sample",
           "describe_methods", "gradient_loss", "make_method", "method_class"]
