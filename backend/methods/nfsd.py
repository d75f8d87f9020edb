"""NFSD, Noise-Free Score Distillation (Katzir et al. 2024).

    schedule, noise: as SDS (random t, fresh eps; the paper anneals max t to 500: `anneal_after`)
    rule: with e_y, e_0, e_neg predicted on the same z_t in ONE prior call,
        delta_C = e_y - e_0                                                      (eq. 3)
        delta_D = e_0 if t < 200 else e_0 - e_neg                                (eq. 6)
        g = w(t) (delta_D + s delta_C),  s = 7.5,  no "- eps" term              (eq. 7)
Nothing in the rule holds x at the data: at t >= 200 it pushes along e_y - e_0 and away from the
negative. On the exact Gaussian mixture it ends 9 off the class (negative = the mixture), sharper than
the data (a blurry negative), or runs away (another class as negative): docs/methods.md, "NFSD".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..priors.base import NEGATIVE, NFSD_NEGATIVE_PROMPT, TEXT, UNCOND, View
from .base import GradientOutput, option_default, timestep_batch, weight
from .sds import RandomTimesteps

# Below this t the unconditional prediction is taken as delta_D alone (eq. 6): its noise part is small.
DELTA_D_SWITCH = 200


def nfsd_direction(e_text: torch.Tensor, e_uncond: torch.Tensor, e_neg: torch.Tensor, t: int,
                   scale: float) -> torch.Tensor:
    """delta_D + s delta_C (eqs. 3, 6 and 7 without w(t))."""
    delta_c = e_text - e_uncond                                               # eq. 3
    delta_d = e_uncond if t < DELTA_D_SWITCH else e_uncond - e_neg            # eq. 6
    return delta_d + scale * delta_c                                          # eq. 7


@dataclass
class NFSD(RandomTimesteps):
    name: ClassVar[str] = "nfsd"
    default_negative: ClassVar[str | None] = NFSD_NEGATIVE_PROMPT

    cfg: float = option_default("nfsd", "cfg")

    def gradient_at(self, x: torch.Tensor, t: int, eps: torch.Tensor, view: View) -> GradientOutput:
        schedule = self.prior.schedule
        z_t = schedule.add_noise(x, eps, t)
        e_text, e_uncond, e_neg = self.prior.predict_noise(z_t, timestep_batch(t, x), (TEXT, UNCOND, NEGATIVE), view)
        grad = weight(schedule, t, self.weighting, x) * nfsd_direction(e_text, e_uncond, e_neg, t, self.cfg)
        return GradientOutput(grad, t, {"noise": eps, "z_t": z_t})
