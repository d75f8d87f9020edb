"""A score distillation method = a timestep schedule + a noise source + a gradient rule.

Every method turns the current render x (in the prior's space) into a gradient g on x. The loop
applies it with  loss = 0.5 * sum((x - (x - g).detach())**2) / B,  so d loss / d x = g / B
(`gradient_loss`).

CFG convention used throughout (docs/methods.md): e_s(z, t) = e(z, t, 0) + s * (e(z, t, y) - e(z, t, 0)).
threestudio writes e_y + s (e_y - e_0), which is the same thing at s + 1.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from shared.schema import METHODS, Field, SettingError, check_method_options, check_value

from ..errors import UserError
from ..priors.base import TEXT, UNCOND, NoiseSchedule, Prior, View

# Every schedule in docs/methods.md is written for SD's 1000 training timesteps; all priors here use them.
NUM_TIMESTEPS = NoiseSchedule.num_train_timesteps


@dataclass
class GradientOutput:
    grad: torch.Tensor          # g, same shape as x
    t: int                      # the timestep used (for logs and progress)
    extras: dict[str, Any] = field(default_factory=dict)  # the noise and z_t used (tests, analysis)


def check_range(name: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    """One number against its range, with the schema's wording (max_steps, seed, DDIM steps)."""
    try:
        check_value(name, Field("int" if integer else "float", None, low, high), value)
    except SettingError as error:
        raise UserError(error.message, error.field) from None


def option_default(method: str, option: str) -> Any:
    """The default of one method option, from its one declaration in shared/schema.py METHODS."""
    return METHODS[method].options[option].default


def cfg_combine(e_uncond: torch.Tensor, e_text: torch.Tensor, scale: float) -> torch.Tensor:
    """e_s = e_0 + s (e_y - e_0)."""
    return e_uncond + scale * (e_text - e_uncond)


def weight(schedule, t: int, kind: str, like: torch.Tensor) -> torch.Tensor | float:
    """w(t): "sds" = 1 - abar_t (DreamFusion's default), "uniform" = 1 (the schema allows no other)."""
    return 1.0 if kind == "uniform" else 1.0 - schedule.abar(t, like)


def timestep_batch(t: int, like: torch.Tensor) -> torch.Tensor:
    """The one timestep t of this step as the [B] integer tensor a prior expects."""
    return torch.full((like.shape[0],), int(t), dtype=torch.long, device=like.device)


def guided_noise(prior: Prior, z_t: torch.Tensor, t: int, view: View, scale: float) -> torch.Tensor:
    """e_s(z_t, t): text and empty-prompt predictions in ONE prior call, combined by CFG. At s = 1,
    e_s = e_y: the empty prompt's prediction would cancel, so it is not computed."""
    if scale == 1.0:
        return prior.predict_noise(z_t, timestep_batch(t, z_t), (TEXT,), view)[0]
    e_text, e_uncond = prior.predict_noise(z_t, timestep_batch(t, z_t), (TEXT, UNCOND), view)
    return cfg_combine(e_uncond, e_text, scale)


def linear_timestep(step: int, max_steps: int, t_start: float, t_end: float) -> int:
    """A deterministic, linearly decreasing t(step) = T (t_start - (t_start - t_end) step / max_steps),
    rounded: the plain choice for FSD (eq. 9/14, t(tau) decreasing). SDI truncates as its authors do."""
    progress = min(max(step / max(max_steps, 1), 0.0), 1.0)
    t = NUM_TIMESTEPS * (t_start - (t_start - t_end) * progress)
    return min(max(int(round(t)), 0), NUM_TIMESTEPS - 1)


def gradient_loss(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The surrogate loss whose gradient on x is g / B: 0.5 * sum((x - (x - g).detach())**2) / B."""
    return 0.5 * ((x - (x - g).detach()) ** 2).sum() / x.shape[0]


def check_decreasing(method: "Method") -> None:
    """SDI and FSD walk t down from t_start to t_end: refuse a schedule that would climb."""
    if method.t_end > method.t_start:
        raise UserError(f"{method.name} options: t_end = {method.t_end} is above t_start = {method.t_start}: "
                        "t must decrease, so give t_end <= t_start")


@dataclass
class Method(ABC):
    """Base class. Subclasses are dataclasses whose fields are the user-settable options with the
    authors' defaults; `max_steps` and `seed` are filled in by the loop. The options' ranges and
    descriptions are shared/schema.py's METHODS[name]; subclasses read their defaults from there
    (`option_default`)."""

    name: ClassVar[str]
    #: the negative prompt this method uses when the user gives none (NFSD's p_neg); None: no negative.
    default_negative: ClassVar[str | None] = None

    cfg: float = 7.5
    max_steps: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()
        self.generator = torch.Generator().manual_seed(self.seed)

    def validate(self) -> None:
        """Raise UserError naming the first bad option and its allowed values."""
        check_range("max_steps", self.max_steps, 1, 10**9, integer=True)
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        try:
            check_method_options(self.name, {option: getattr(self, option) for option in self.options()})
        except SettingError as error:
            raise UserError(error.message) from None

    def setup(self, prior: Prior) -> None:
        """Called once before the first step (e.g. FSD draws its world noise map here)."""
        self.prior = prior

    @abstractmethod
    def gradient(self, x: torch.Tensor, step: int, view: View) -> GradientOutput:
        """g on x for this training step. x is detached, [B, C, h, w] in the prior's space."""

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Seeded noise (drawn on the CPU so runs repeat across devices)."""
        return torch.randn(x.shape, generator=self.generator).to(device=x.device, dtype=x.dtype)

    def randint(self, low: int, high: int) -> int:
        """A seeded integer uniform on {low .. high} (both included)."""
        return int(torch.randint(low, high + 1, (1,), generator=self.generator).item())

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume this method exactly."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The user-settable options and their defaults."""
        return {f.name: f.default for f in fields(cls) if f.name not in ("max_steps", "seed")}
