"""SDS, Score Distillation Sampling (Poole et al. 2022, DreamFusion), the baseline.

    schedule: t ~ U{20 .. 980} every step (optionally max t -> 500 after `anneal_after` steps)
    noise:    fresh eps ~ N(0, I) every step
    rule:     g = w(t) (e_s(z_t, t) - eps),  z_t = a_t x + s_t eps     (NFSD paper eq. 2, FSD paper eq. 7)
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import UserError
from ..priors.base import Prior, View
from .base import GradientOutput, Method, NUM_TIMESTEPS, guided_noise, option_default, weight


def sds_gradient(prior: Prior, x: torch.Tensor, t: int, eps: torch.Tensor, view: View, scale: float,
                 weighting: str) -> GradientOutput:
    """g = w(t) (e_s(z_t, t) - eps) with z_t = a_t x + s_t eps. SDS (FSD paper eq. 7) with random eps,
    FSD (FSD paper eq. 15) with eps = eps(c)."""
    z_t = prior.schedule.add_noise(x, eps, t)                                  # FSD paper eq. 1
    e_s = guided_noise(prior, z_t, t, view, scale)                             # NFSD paper eq. 1
    grad = weight(prior.schedule, t, weighting, x) * (e_s - eps)              # NFSD paper eq. 2
    return GradientOutput(grad, t, {"noise": eps, "z_t": z_t})


@dataclass
class RandomTimesteps(Method):
    """The schedule and noise source SDS and NFSD share: t ~ U{T t_min .. T t_max} and fresh eps."""

    t_min: float = option_default("sds", "t_min")
    t_max: float = option_default("sds", "t_max")
    anneal_after: int | None = option_default("sds", "anneal_after")  # then the upper bound of t is anneal_t_max
    anneal_t_max: float = option_default("sds", "anneal_t_max")
    weighting: str = option_default("sds", "weighting")  # w(t): "sds" = 1 - abar_t, "uniform" = 1

    def validate(self) -> None:
        super().validate()
        t_max = min(self.t_max, self.anneal_t_max) if self.anneal_after is not None else self.t_max
        if not self.t_min <= t_max:
            raise UserError(f"{self.name} options: t_min = {self.t_min} is above the largest t allowed "
                            f"({t_max}): lower t_min or raise t_max / anneal_t_max")

    def bounds(self, step: int) -> tuple[int, int]:
        """The integer range of t at this step (DreamFusion's U(0.02, 0.98); max 500 after annealing)."""
        high = self.t_max
        if self.anneal_after is not None and step >= self.anneal_after:
            high = self.anneal_t_max
        return round(NUM_TIMESTEPS * self.t_min), min(round(NUM_TIMESTEPS * high), NUM_TIMESTEPS - 1)

    def timestep(self, step: int) -> int:
        return self.randint(*self.bounds(step))

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn_like(x)

    def gradient(self, x: torch.Tensor, step: int, view: View) -> GradientOutput:
        t = self.timestep(step)
        return self.gradient_at(x, t, self.noise(x), view)

    @abstractmethod
    def gradient_at(self, x: torch.Tensor, t: int, eps: torch.Tensor, view: View) -> GradientOutput:
        """The gradient rule at a given t and noise."""


@dataclass
class SDS(RandomTimesteps):
    name: ClassVar[str] = "sds"

    cfg: float = option_default("sds", "cfg")

    def gradient_at(self, x: torch.Tensor, t: int, eps: torch.Tensor, view: View) -> GradientOutput:
        return sds_gradient(self.prior, x, t, eps, view, self.cfg, self.weighting)
