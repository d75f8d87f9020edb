"""A score distillation method = a timestep schedule + a noise source + a gradient rule.

Every method turns the current render x (in the prior's space) into a gradient g on x. The loop
applies it with  loss = 0.5 * sum((x - (x - g).detach())**2) / B,  so d loss / d x = g / B.

CFG convention used throughout (METHODS.md): e_s(z, t) = e(z, t, 0) + s * (e(z, t, y) - e(z, t, 0)).
threestudio writes e_y + s (e_y - e_0), which is the same thing at s + 1.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from ..errors import UserError
from ..priors.base import Prior, View


@dataclass
class GradientOutput:
    grad: torch.Tensor          # g, same shape as x
    t: int                      # the timestep used (for logs and progress)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. x0_hat for previews


def cfg_combine(e_uncond: torch.Tensor, e_text: torch.Tensor, scale: float) -> torch.Tensor:
    """e_s = e_0 + s (e_y - e_0)."""
    return e_uncond + scale * (e_text - e_uncond)


def weight(schedule, t: int, kind: str, like: torch.Tensor) -> torch.Tensor | float:
    """w(t): "sds" = 1 - abar_t (DreamFusion's default), "uniform" = 1."""
    if kind == "uniform":
        return 1.0
    if kind == "sds":
        return 1.0 - schedule.abar(t, like)
    raise UserError(f"unknown weighting {kind!r}: use 'sds' or 'uniform'")


@dataclass
class Method(ABC):
    """Base class. Subclasses are dataclasses whose fields are the user-settable options with the
    authors' defaults; `max_steps` and `seed` are filled in by the loop."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line, shown in the CLI help and the Blender panel

    cfg: float = 7.5
    max_steps: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def setup(self, prior: Prior) -> None:
        """Called once before the first step (e.g. FSD draws its world noise map here)."""
        self.prior = prior

    @abstractmethod
    def gradient(self, x: torch.Tensor, step: int, view: View) -> GradientOutput:
        """g on x for this training step. x is detached, [B, C, h, w] in the prior's space."""

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Seeded noise (drawn on the CPU so runs repeat across devices)."""
        return torch.randn(x.shape, generator=self.generator).to(device=x.device, dtype=x.dtype)

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume this method exactly."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The user-settable options and their defaults."""
        return {f.name: f.default for f in fields(cls) if f.name not in ("max_steps", "seed")}
