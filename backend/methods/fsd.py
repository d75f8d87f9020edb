"""FSD, Flow Score Distillation (Yan et al. 2024, "Flow Score Distillation for Diverse Text-to-3D
Generation").

    schedule: t(step) decreasing linearly from 980 to 20                       (eq. 9, t(tau) decreasing)
    noise:    eps(c) = sqrt(beta) (M patch(c) + (1 - M) E_b) + sqrt(1 - beta) n  (eq. 16, world-map noise)
    rule:     g = w(t) (e_s(z_t, t) - eps(c)),  z_t = a_t x + s_t eps(c)        (eq. 15)
In 2D (one fixed camera) the noise is constant, and with the step sizes of Proposition 1 (the "flow"
optimiser of backend/image.py) each update is one DDIM step (measured against DDIM from the same noise in
docs/methods.md, "FSD"). With Adam it overshoots DDIM's answer (docs/methods.md, "FSD").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..priors.base import Prior, View
from .base import GradientOutput, Method, check_decreasing, linear_timestep, option_default
from .sds import sds_gradient

MASK_THRESHOLD = 0.5  # foreground where the pooled opacity is at least this (M = [alpha >= alpha_0])


@dataclass
class FSD(Method):
    name: ClassVar[str] = "fsd"

    cfg: float = option_default("fsd", "cfg")
    t_start: float = option_default("fsd", "t_start")
    t_end: float = option_default("fsd", "t_end")
    beta: float = option_default("fsd", "beta")  # 1: fully deterministic eps(c); 0: SDS's fresh noise (eq. 16, Fig. 8)
    theta: float = option_default("fsd", "theta")  # degrees of view one patch spans; sets the world-map size (sec. 5.3)
    weighting: str = option_default("fsd", "weighting")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.world: torch.Tensor | None = None       # E_p, [C, H_buf + h, W_buf + w]
        self.background: torch.Tensor | None = None  # E_b, [C, h, w]

    def validate(self) -> None:
        super().validate()
        check_decreasing(self)

    def setup(self, prior: Prior) -> None:
        """Draw the world map E_p and the background noise E_b once per run (unless resumed)."""
        super().setup(prior)
        channels, h, w = prior.latent_shape
        self.size = (h, w)
        self.buffer = (round(h * 180.0 / self.theta), round(w * 360.0 / self.theta))  # (H_buf, W_buf)
        if self.world is None:
            h_buf, w_buf = self.buffer
            core = torch.randn((channels, h_buf + h, w_buf), generator=self.generator)
            self.world = torch.cat([core, core[:, :, :w]], dim=2)  # columns wrap: W_buf + k == k
            self.background = torch.randn((channels, h, w), generator=self.generator)

    def timestep(self, step: int) -> int:
        return linear_timestep(step, self.max_steps, self.t_start, self.t_end)

    def patch_origin(self, elevation: float, azimuth: float) -> tuple[int, int]:
        """(row, col) of a camera's patch: elevation rows down from the top, azimuth columns to the right."""
        h_buf, w_buf = self.buffer
        row = math.floor((-elevation * h_buf / 180.0) % h_buf)
        col = math.floor((azimuth * w_buf / 360.0) % w_buf)
        return row, col

    def patches(self, view: View) -> torch.Tensor:
        """The world-map patch W(E_p) of each camera (eq. 16): [B, C, h, w] on the CPU."""
        h, w = self.size
        out = []
        for elevation, azimuth in zip(view.cameras.elevation.tolist(), view.cameras.azimuth.tolist()):
            row, col = self.patch_origin(elevation, azimuth)
            out.append(self.world[:, row:row + h, col:col + w])
        return torch.stack(out)

    def mask(self, view: View) -> torch.Tensor:
        """M: the rendered opacity average-pooled to the prior's h x w, >= 0.5. [B, 1, h, w]."""
        pooled = F.adaptive_avg_pool2d(view.opacity.float(), self.size)
        return (pooled >= MASK_THRESHOLD).float()

    def noise(self, x: torch.Tensor, view: View) -> torch.Tensor:
        """eps(c) of eq. 16; fresh noise is drawn only when beta < 1."""
        mask = self.mask(view).to(device=x.device, dtype=x.dtype)
        patch = self.patches(view).to(device=x.device, dtype=x.dtype)
        fixed = mask * patch + (1.0 - mask) * self.background.to(device=x.device, dtype=x.dtype)
        if self.beta == 1.0:
            return fixed
        return math.sqrt(self.beta) * fixed + math.sqrt(1.0 - self.beta) * self.randn_like(x)

    def gradient(self, x: torch.Tensor, step: int, view: View) -> GradientOutput:
        return sds_gradient(self.prior, x, self.timestep(step), self.noise(x, view), view,
                            self.cfg, self.weighting)                                       # eq. 15

    def state_dict(self) -> dict:
        return {**super().state_dict(), "world": self.world, "background": self.background}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.world, self.background = state["world"], state["background"]
