"""The score distillation methods (SDS, NFSD, SDI, FSD) by name, and DDIM, the 2D reference sampler.

Each method is a timestep schedule + a noise source + a gradient rule (base.py); `make_method`
builds one from its name and user options with clear errors. The names, options, defaults, ranges
and descriptions are shared/schema.py's METHODS; tests/test_schema.py checks that the classes agree.
"""
from __future__ import annotations

from typing import Any

from shared.schema import METHODS as SCHEMA
from shared.schema import SettingError, check_method_options, method_spec

from ..errors import UserError
from .base import GradientOutput, Method, gradient_loss
from .ddim import ddim_sample
from .fsd import FSD
from .nfsd import NFSD
from .sdi import SDI
from .sds import SDS

METHOD_CLASSES: dict[str, type[Method]] = {cls.name: cls for cls in (SDS, NFSD, SDI, FSD)}  # the schema's order


def method_class(name: str) -> type[Method]:
    try:
        return METHOD_CLASSES[method_spec(name).name]
    except SettingError as error:
        raise UserError(error.message) from None


def make_method(name: str, cfg: float | None = None, options: dict[str, Any] | None = None,
                max_steps: int = 1000, seed: int = 0) -> Method:
    """The method `name` with its authors' defaults, then `options` (e.g. {"weighting": "uniform"}),
    then `cfg` when given. Raises UserError for an unknown method, an unknown option or a bad value."""
    cls = method_class(name)
    options = dict(options or {})
    if cfg is not None:
        options["cfg"] = cfg
    try:
        options = check_method_options(name, options)  # names, types and ranges (shared/schema.py)
    except SettingError as error:
        raise UserError(error.message) from None
    return cls(**options, max_steps=max_steps, seed=seed)  # __post_init__ checks the values together


def guidance_scale(cfg: float | None, options: dict[str, Any] | None, prior) -> float | None:
    """The guidance scale to build a method with: the user's (`cfg`, or a cfg in `options`), else the
    prior's default_cfg (1 for the exact shapes prior); None leaves the method's own default."""
    if cfg is not None or "cfg" in (options or {}):
        return cfg
    return prior.default_cfg


def describe_methods() -> dict[str, str]:
    """name -> one-line description, from shared/schema.py (which the CLI help and the panel read too)."""
    return {name: spec.description for name, spec in SCHEMA.items()}


__all__ = ["METHOD_CLASSES", "FSD", "NFSD", "SDI", "SDS", "GradientOutput", "Method", "ddim_sample",
           "describe_methods", "gradient_loss", "guidance_scale", "make_method", "method_class"]
