"""SDI, Score Distillation via (DDIM) Inversion (Lukoianov et al. 2024, "Score Distillation via
Reparametrized DDIM").

    schedule: t(step) = T (0.98 - (0.98 - 0.25) step / max_steps), deterministic     (appendix A.1)
    noise:    z = the render x DDIM-inverted to t + d, d ~ U{0..99}, with CFG -7.5 and a small
              entropy term 0.3 sigma n at every inversion step                       (sec. 5, eq. 11)
    rule:     x0_hat = (z - s_t e_7.5(z, t)) / a_t,   g = x - x0_hat
              = (s_t / a_t) (e_hat - eps_inv),  eps_inv = (z - a_t x) / s_t           (eq. 10)
Perp-Neg and the paper's convexity regulariser are not part of the method here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..priors.base import View
from .base import NUM_TIMESTEPS, GradientOutput, Method, check_decreasing, guided_noise, linear_timestep
from .ddim import ddim_step, ddim_timesteps, predicted_x0

CLEAN_START = 0  # the inversion starts from x itself, at the noise level abar[0] of timestep 0


@dataclass
class SDI(Method):
    name: ClassVar[str] = "sdi"

    cfg: float = 7.5
    inversion_cfg: float = -7.5   # negative CFG on the inversion (sec. 6.2, "CFG for inversion")
    entropy: float = 0.3          # the 0.3 of eq. 11
    t_start: float = 0.98
    t_end: float = 0.25
    inversion_steps: int = 10     # the DDIM grid 1, 101, ..., 901 (sec. 6.2, "number of steps")

    def validate(self) -> None:
        super().validate()
        check_decreasing(self)

    def timestep(self, step: int) -> int:
        return linear_timestep(step, self.max_steps, self.t_start, self.t_end)        # appendix A.1

    def offset(self) -> int:
        """d ~ U{0 .. T/n - 1}: how far past t the inversion goes, about one DDIM step (appendix A.1)."""
        return self.randint(0, NUM_TIMESTEPS // self.inversion_steps - 1)

    def inversion_grid(self, t: int, d: int) -> list[int]:
        """The clean start, the DDIM timesteps below t, then t + d (capped at T - 1)."""
        below = [k for k in ddim_timesteps(self.inversion_steps) if k < t]
        return [CLEAN_START, *below, min(t + d, NUM_TIMESTEPS - 1)]

    @torch.no_grad()
    def invert(self, x: torch.Tensor, grid: list[int], view: View) -> torch.Tensor:
        """DDIM inversion of x along `grid` (eq. 2 run from images to noise), with CFG `inversion_cfg`
        and the entropy noise of eq. 11 after every step."""
        schedule = self.prior.schedule
        z = x
        for t_cur, t_next in zip(grid[:-1], grid[1:]):
            abar_cur, abar_next = schedule.abar(t_cur, x), schedule.abar(t_next, x)
            e_hat = guided_noise(self.prior, z, t_cur, view, self.inversion_cfg)
            z = ddim_step(z, e_hat, abar_cur, abar_next)
            if self.entropy:
                # sigma^2: the DDPM posterior variance between the two noise levels (eq. 11)
                variance = ((1 - abar_cur) / (1 - abar_next) * (1 - abar_next / abar_cur)).clamp(min=0.0)
                z = z + self.entropy * variance.sqrt() * self.randn_like(z)
        return z

    @torch.no_grad()
    def gradient_at(self, x: torch.Tensor, t: int, z: torch.Tensor, view: View) -> GradientOutput:
        """The rule of eq. 10 given the inverted latent z; z is used as it is, x is not re-noised."""
        schedule = self.prior.schedule
        a_t, s_t = schedule.a_s(t, x)
        e_hat = guided_noise(self.prior, z, t, view, self.cfg)
        x0_hat = predicted_x0(z, e_hat, schedule.abar(t, x))
        grad = x - x0_hat                                                             # eq. 10
        eps_inv = (z - a_t * x) / s_t  # the inverted noise, in SDS's place (eq. 10)
        return GradientOutput(grad, t, {"noise": eps_inv, "z_t": z, "x0_hat": x0_hat})

    def gradient(self, x: torch.Tensor, step: int, view: View) -> GradientOutput:
        t = self.timestep(step)
        grid = self.inversion_grid(t, self.offset())
        out = self.gradient_at(x, t, self.invert(x, grid, view), view)
        out.extras["t_inverted"] = grid[-1]
        return out
