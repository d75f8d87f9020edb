"""SDI, Score Distillation via (DDIM) Inversion (Lukoianov et al. 2024, "Score Distillation via
Reparametrized DDIM"), as its authors run it: their threestudio guidance
threestudio/models/guidance/stable_diffusion_sdi_guidance.py ("the guidance" below) and config
configs/sdi.yaml of threestudio-project/threestudio at commit 28d9d80 (docs/methods.md, "SDI").

    schedule: t(step) = int(T (t_end + (t_start - t_end)(1 - step / max_steps))), 980 -> 250
              (the guidance, update_step lines 655-660 and set_min_max_steps lines 155-156)
    noise:    z = the render x DDIM-inverted to t + d, d ~ U{0 .. T/n - 1}, with CFG -7.5 and an
              entropy term 0.3 sigma n after every inversion step              (paper sec. 5, eq. 11)
    rule:     x0_hat = (z - s_t e_7.5(z, t)) / a_t,   g = x - x0_hat
              = (s_t / a_t) (e_hat - eps_inv),  eps_inv = (z - a_t x) / s_t       (paper eq. 10)
Perp-Neg (sdi.yaml line 66) is the prior's option; the convexity regulariser is not part of it.
What this does on an exact prior (it contracts towards the class mean) is measured in docs/methods.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..priors.base import View
from .base import GradientOutput, Method, NUM_TIMESTEPS, check_decreasing, guided_noise, option_default
from .ddim import ddim_step, ddim_timesteps, predicted_x0

# The inversion starts from x itself at the noise level abar[0]: the guidance's first step runs
# from timestep 1 - T/n = -99, which the inverse scheduler maps to initial_alpha_cumprod = abar[0]
# (line 281; SD's scheduler config has set_alpha_to_one false), and its variance to
# final_alpha_cumprod = abar[0] (line 326). The guidance also passes -99 to the UNet as that step's
# timestep (line 394); an exact prior has no timestep -99, so it is queried at 0, the noise level
# the step itself assumes. This is the one place where we cannot do exactly what the code does.
CLEAN_START = 0


@dataclass
class SDI(Method):
    name: ClassVar[str] = "sdi"

    # CFG scales in our convention e_0 + s (e_y - e_0). The authors' config runs Perp-Neg (sdi.yaml
    # line 66), whose branch is written e_0 + s (...) (guidance line 241): their 7.5 / -7.5 are ours.
    # Without Perp-Neg their code writes e_y + s (e_y - e_0) (line 263), i.e. ours at 8.5 / -6.5;
    # both are measured in docs/methods.md.
    cfg: float = option_default("sdi", "cfg")
    # negative CFG on the inversion (sec. 6.2; sdi.yaml line 78)
    inversion_cfg: float = option_default("sdi", "inversion_cfg")
    entropy: float = option_default("sdi", "entropy")  # the 0.3 of eq. 11
    t_start: float = option_default("sdi", "t_start")
    t_end: float = option_default("sdi", "t_end")
    # the DDIM grid 1, 101, ..., 901 (sec. 6.2, "number of steps")
    inversion_steps: int = option_default("sdi", "inversion_steps")

    def validate(self) -> None:
        super().validate()
        check_decreasing(self)

    def timestep(self, step: int) -> int:
        """The guidance's annealed t: int(T * ((t_start - t_end)(1 - step / max_steps) + t_end)),
        truncated as int() does (lines 655-660, 155-156), so 980 at step 0 and 250 at the end."""
        progress = min(max(step / max(self.max_steps, 1), 0.0), 1.0)
        percent = (self.t_start - self.t_end) * (1.0 - progress) + self.t_end
        return min(int(NUM_TIMESTEPS * percent), NUM_TIMESTEPS - 1)

    def offset(self) -> int:
        """d ~ U{0 .. T/n - 1}: how far past t the inversion goes, about one DDIM step (appendix A.1;
        the guidance's int(random() * T // n), lines 364-371)."""
        return self.randint(0, NUM_TIMESTEPS // self.inversion_steps - 1)

    def inversion_grid(self, t: int, d: int) -> list[int]:
        """The clean start, the DDIM timesteps 1, 1 + T/n, ... below t ("leading" spacing with
        steps_offset 1, lines 345-357), then t + d capped at T - 1 (lines 369-372)."""
        below = [k for k in ddim_timesteps(self.inversion_steps) if k < t]
        return [CLEAN_START, *below, min(t + d, NUM_TIMESTEPS - 1)]

    @torch.no_grad()
    def invert(self, x: torch.Tensor, grid: list[int], view: View) -> torch.Tensor:
        """DDIM inversion of x along `grid` (eq. 2 run from images to noise), with CFG `inversion_cfg`
        queried at each step's source timestep (lines 394-402), and the entropy noise of eq. 11 after
        every step (lines 326-327)."""
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
        """The rule of eq. 10 given the inverted latent z (at t + d), denoised at t, not t + d, as the
        guidance does (lines 448-460); x is not re-noised. The authors' loss is
        0.5 * mse(x, x0_hat, mean) / B (line 525): the same direction, scaled by 1 / (B * numel),
        which their Adam (eps 1e-15) cancels; the loop applies g with a sum (gradient_loss)."""
        schedule = self.prior.schedule
        a_t, s_t = schedule.a_s(t, x)
        e_hat = guided_noise(self.prior, z, t, view, self.cfg)
        x0_hat = predicted_x0(z, e_hat, schedule.abar(t, x))
        grad = x - x0_hat                                                             # eq. 10
        eps_inv = (z - a_t * x) / s_t  # the inverted noise, in SDS's place (eq. 10)
        return GradientOutput(grad, t, {"noise": eps_inv, "z_t": z})

    def gradient(self, x: torch.Tensor, step: int, view: View) -> GradientOutput:
        t = self.timestep(step)
        grid = self.inversion_grid(t, self.offset())
        out = self.gradient_at(x, t, self.invert(x, grid, view), view)
        out.extras["t_inverted"] = grid[-1]
        return out
