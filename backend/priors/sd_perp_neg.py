"""Perp-Neg for view-dependent prompts (Armandpour et al. 2023, "Re-imagine the Negative Prompt
Algorithm: Transform 2D Diffusion into 3D, alleviate Janus problem and Beyond"), as SDI's paper uses it.

The text prediction is replaced by
    e_text' = e_0 + d_y - sum_i w_i perp(d_i, d_y),   d = e - e_0,   perp(a, b) = a - (a.b / |b|^2) b
where the negatives are the prompts of the OTHER views. Every method's CFG then works unchanged:
e_0 + s (e_text' - e_0) is the paper's Perp-Neg guidance.

The paper's 3D setting: the positive prompt interpolates between the view prompts by
azimuth, and the negative weights are shifted exponentials w(r) = a exp(-b r) + c of the
interpolation ratio r, with the paper's fitted (a, b, c):
  |azimuth| < 90  (front to side), r = 1 - |azi|/90:  positive = r front + (1 - r) side,
                   negatives: front with W_FRONT_SIDE(r), side with W_FRONT_SIDE(1 - r)
                   (pure front: side weighted 1.57; pure side: front weighted 1.57)
  |azimuth| >= 90 (side to back), r = 2 - |azi|/90:   positive = r side + (1 - r) back,
                   negatives: side with W_SIDE_BACK(r), front with W_FRONT_BACK(r)
                   (pure back: front weighted 1.97, side 0.39)
  overhead (elevation > 60): the overhead prompt, no negatives.
"""
from __future__ import annotations

import math

import torch

from ..cameras import VIEW_SUFFIXES

FRONT, SIDE, BACK, OVERHEAD = (VIEW_SUFFIXES.index(f"{v} view") for v in ("front", "side", "back", "overhead"))
OVERHEAD_ELEVATION = 60.0

# (a, b, c) of w(r) = a exp(-b r) + c, each zero where its negative equals the positive prompt.
W_FRONT_SIDE = (4.0, 0.5, -2.426)
W_SIDE_BACK = (1.0, 0.5, -0.606)
W_FRONT_BACK = (1.0, 0.5, 0.967)


def _decay(abc: tuple[float, float, float], r: float) -> float:
    a, b, c = abc
    return max(a * math.exp(-b * r) + c, 0.0)  # the fits cross zero at r = 1 by a hair; never flip the sign


def view_mixture(elevation: float, azimuth: float) -> tuple[list[float], list[int], list[float]]:
    """For one camera: weights of the four view prompts (VIEW_SUFFIXES order) forming the positive prompt,
    the two negative view prompts, and their Perp-Neg weights."""
    positive = [0.0] * len(VIEW_SUFFIXES)
    if elevation > OVERHEAD_ELEVATION:
        positive[OVERHEAD] = 1.0
        return positive, [FRONT, SIDE], [0.0, 0.0]
    azimuth = abs((azimuth + 180.0) % 360.0 - 180.0)
    if azimuth < 90.0:
        r = 1.0 - azimuth / 90.0
        positive[FRONT], positive[SIDE] = r, 1.0 - r
        return positive, [FRONT, SIDE], [_decay(W_FRONT_SIDE, r), _decay(W_FRONT_SIDE, 1.0 - r)]
    r = 2.0 - azimuth / 90.0
    positive[SIDE], positive[BACK] = r, 1.0 - r
    return positive, [SIDE, FRONT], [_decay(W_SIDE_BACK, r), _decay(W_FRONT_BACK, r)]


def perpendicular(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The part of a [B, ...] orthogonal to b, per sample: a - (a.b / |b|^2) b."""
    dims = tuple(range(1, a.dim()))
    along = (a * b).sum(dims, keepdim=True) / (b * b).sum(dims, keepdim=True).clamp_min(1e-12)
    return a - along * b


def perp_neg_text(e_uncond: torch.Tensor, e_text: torch.Tensor, e_negatives: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """e_0 + d_y - sum_i w_i perp(d_i, d_y), the Perp-Neg text prediction. e_negatives [N, B, ...], weights [B, N]."""
    d_text = e_text - e_uncond
    out = e_uncond + d_text
    for i, e_negative in enumerate(e_negatives):
        w = weights[:, i].reshape(-1, *([1] * (d_text.dim() - 1))).to(d_text)
        out = out - w * perpendicular(e_negative - e_uncond, d_text)
    return out
