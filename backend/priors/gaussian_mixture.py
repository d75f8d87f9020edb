"""An exact prior whose data is a mixture of low-rank Gaussians: the 2D benchmark of the methods.

The shapes prior is a finite set of images, so "reached the mean of the class" and "reached a sample"
can look alike there. Here every class is a continuum: class k is N(mu_k, U_k diag(lambda_k) U_k^T)
in D = 3 x 16 x 16 = 768 dimensions with rank r = 16 (U_k orthonormal, D x r). A true sample sits on
the class's 16-dimensional affine subspace with a known spread along it, so a result can be told
apart from the class mean (no detail), from a blur or an over-saturated image (off the subspace),
and from another class.

Noising z_t = a_t x + s_t eps keeps each class Gaussian, N(a mu, C) with C = a^2 Sigma + s^2 I, which
is full rank for every table timestep (s_t > 0 from t = 0), so the posterior is exact and well
defined without any added floor. With P = U diag(a^2 lambda / (a^2 lambda + s^2)) U^T:
    C^-1 = (I - P) / s^2,   log det C = (D - r) log s^2 + sum log(a^2 lambda + s^2)
    E[x0 | z, k] = mu + U diag(a lambda / (a^2 lambda + s^2)) U^T (z - a mu)
    E[x0 | z]    = sum_k w_k(z) E[x0 | z, k],   w_k = softmax_k(log pi_k + log N(z; a mu_k, C_k))
    eps_hat      = (z - a E[x0 | z]) / s
(Tweedie: E[x0 | z] = (z + s^2 grad log p_t(z)) / a; tests/test_gaussian_mixture.py checks it.)

Conditions: TEXT = the prompt's class ("class 2"), UNCOND = the mixture of all classes, NEGATIVE =
the mixture (no negative prompt, or ""), the class a negative prompt names, or, for any other
negative text (NFSD's "unrealistic, blurry, ..."), the mixture seen through a Gaussian blur, as the
shapes prior does.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import NEGATIVE, TEXT, UNCOND, NoiseSchedule, Prior, View, rgb_to_signed, signed_to_rgb
from .shapes import _blur_matrix

SHAPE = (3, 16, 16)
CLASSES = 4
RANK = 16
TOTAL_VARIANCE = 2.0     # trace of each class covariance: true samples of a class lie about 2 apart
EIGEN_DECAY = 0.85       # lambda_i proportional to 0.85^i
MEAN_RANGE = 0.7         # class means are smooth images with values in about [-0.7, 0.7]
BLUR_SIGMA = 1.0         # pixels, for the "blurry" negative
CLASS_WORD = re.compile(r"\bclass\s*(\d+)\b")


@dataclass
class Gaussians:
    """K Gaussians N(mu_k, U_k diag(lam_k) U_k^T) with mixture weights pi_k, flattened to D."""
    mu: torch.Tensor       # [K, D]
    U: torch.Tensor        # [K, D, r], orthonormal columns
    lam: torch.Tensor      # [K, r], > 0
    log_pi: torch.Tensor   # [K]

    def select(self, index: Sequence[int]) -> "Gaussians":
        index = list(index)
        log_pi = self.log_pi[index]
        return Gaussians(self.mu[index], self.U[index], self.lam[index], log_pi - torch.logsumexp(log_pi, 0))

    def to(self, like: torch.Tensor) -> "Gaussians":
        kw = {"dtype": like.dtype, "device": like.device}
        return Gaussians(self.mu.to(**kw), self.U.to(**kw), self.lam.to(**kw), self.log_pi.to(**kw))

    def _parts(self, z: torch.Tensor, a: torch.Tensor, s: torch.Tensor):
        """v = z - a mu_k [K, B, D], its coordinates c = U_k^T v [K, B, r], a^2 lam_k [K, B, r] and
        s^2 [1, B, 1]. z [B, D]; a, s [B]."""
        v = z[None] - a[None, :, None] * self.mu[:, None, :]
        c = torch.bmm(v, self.U)
        return v, c, (a ** 2)[None, :, None] * self.lam[:, None, :], (s ** 2)[None, :, None]

    @staticmethod
    def _log_components(log_pi, v, c, a2lam, s2) -> torch.Tensor:
        """log pi_k + log N(z; a mu_k, a^2 Sigma_k + s^2 I), [B, K] (module docstring)."""
        mahalanobis = ((v ** 2).sum(-1) - (a2lam / (a2lam + s2) * c ** 2).sum(-1)) / s2[..., 0]  # v^T C^-1 v
        dim, rank = v.shape[-1], c.shape[-1]
        log_det = (dim - rank) * torch.log(s2[..., 0]) + torch.log(a2lam + s2).sum(-1)
        return (log_pi[:, None] - 0.5 * (mahalanobis + log_det + dim * math.log(2 * math.pi))).T

    def log_components(self, z: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """log pi_k + log N(z; a mu_k, a^2 Sigma_k + s^2 I): [B, K]. z [B, D]; a, s [B]."""
        return self._log_components(self.log_pi, *self._parts(z, a, s))

    def log_density(self, z: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """log p_t(z) of the mixture, [B]."""
        return torch.logsumexp(self.log_components(z, a, s), dim=-1)

    def posterior_mean(self, z: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """E[x0 | z_t = z], [B, D] (module docstring)."""
        v, c, a2lam, s2 = self._parts(z, a, s)
        gain = a[None, :, None] * self.lam[:, None, :] / (a2lam + s2)                 # [K, B, r]
        per_class = self.mu[:, None, :] + torch.bmm(gain * c, self.U.transpose(1, 2))  # [K, B, D]
        weights = torch.softmax(self._log_components(self.log_pi, v, c, a2lam, s2), dim=-1)  # [B, K]
        return (weights.T[..., None] * per_class).sum(0)


def _smooth(n: int, low: int, generator: torch.Generator) -> torch.Tensor:
    """n smooth images [n, *SHAPE]: Gaussian noise on a low x low grid, upsampled bilinearly."""
    coarse = torch.randn(n, SHAPE[0], low, low, generator=generator, dtype=torch.float64)
    return F.interpolate(coarse, size=SHAPE[1:], mode="bilinear", align_corners=False)


def blurred(g: Gaussians, sigma: float = BLUR_SIGMA) -> Gaussians:
    """The mixture seen through a Gaussian blur B (a linear map): N(B mu, B Sigma B^T), refactored
    to orthonormal directions by an SVD of B U diag(sqrt(lam))."""
    c, h, w = SHAPE
    rows, cols = (_blur_matrix(n, sigma, g.mu.device).to(g.mu) for n in (h, w))

    def blur(x: torch.Tensor) -> torch.Tensor:  # [..., D] -> [..., D]
        images = x.reshape(*x.shape[:-1], c, h, w)
        return (rows @ images @ cols.T).reshape(x.shape)

    mu = blur(g.mu)
    factor = blur((g.U * g.lam.sqrt()[:, None, :]).transpose(1, 2)).transpose(1, 2)  # [K, D, r]
    U, S, _ = torch.linalg.svd(factor, full_matrices=False)
    return Gaussians(mu, U, S ** 2, g.log_pi.clone())


def make_classes(seed: int = 0, classes: int = CLASSES, rank: int = RANK) -> Gaussians:
    """The benchmark's classes: smooth random means, smooth random orthonormal directions (fine
    detail at 8 x 8), eigenvalues decaying by EIGEN_DECAY with trace TOTAL_VARIANCE. float64."""
    generator = torch.Generator().manual_seed(seed)
    mu = _smooth(classes, 4, generator).flatten(1)
    mu = MEAN_RANGE * mu / mu.abs().amax(dim=1, keepdim=True)
    directions = _smooth(classes * rank, 8, generator).reshape(classes, rank, -1).transpose(1, 2)
    U, _ = torch.linalg.qr(directions)                                              # [K, D, r]
    lam = EIGEN_DECAY ** torch.arange(rank, dtype=torch.float64)
    lam = (TOTAL_VARIANCE * lam / lam.sum()).expand(classes, -1).clone()
    return Gaussians(mu, U, lam, torch.full((classes,), -math.log(classes), dtype=torch.float64))


class GaussianMixturePrior(Prior):
    """The exact prior over make_classes(seed), in RGB space x = 2 rgb - 1 at 16 x 16."""

    name = "gaussian-mixture"

    def __init__(self, seed: int = 0):
        self.schedule = NoiseSchedule()
        self.latent_shape = SHAPE
        self.render_resolution = SHAPE[-1]
        self.classes = make_classes(seed)
        self.blurred = blurred(self.classes)
        self.set_prompts("class 0")

    # -- conditions ---------------------------------------------------------------------------------

    def class_names(self) -> list[str]:
        return [f"class {k}" for k in range(len(self.classes.mu))]

    def _class_of(self, text: str) -> int | None:
        match = CLASS_WORD.search(text.lower())
        if match is None:
            return None
        k = int(match.group(1))
        if k >= len(self.classes.mu):
            raise UserError(f"the Gaussian-mixture prior has no {text!r}: use one of {', '.join(self.class_names())}")
        return k

    def set_prompts(self, prompt: str, negative: str | None = None, view_dependent: bool = True) -> None:
        """TEXT = the class `prompt` names ("class 2"). NEGATIVE: the mixture for None or "", the class
        a negative names, or the blurred mixture for any other text (NFSD's negative prompt)."""
        k = self._class_of(prompt)
        if k is None:
            raise UserError(f"the Gaussian-mixture prior needs a class in the prompt {prompt!r}: "
                            f"use one of {', '.join(self.class_names())}")
        self.text_class = k
        self._cache: dict[tuple, Gaussians] = {}
        everything = range(len(self.classes.mu))
        self.conditions = {TEXT: self.classes.select([k]), UNCOND: self.classes}
        if negative is None or not negative.strip():
            self.negative_kind, self.conditions[NEGATIVE] = "mixture", self.classes
        elif (n := self._class_of(negative)) is not None:
            self.negative_kind, self.conditions[NEGATIVE] = f"class {n}", self.classes.select([n])
        else:
            self.negative_kind, self.conditions[NEGATIVE] = "blurred mixture", self.blurred.select(everything)

    def describe(self) -> dict:
        return {"name": self.name, "class": self.text_class, "negative": self.negative_kind}

    def _converted(self, condition: str, like: torch.Tensor) -> Gaussians:
        """The condition's Gaussians in like's dtype and device (cached: set_prompts clears it)."""
        key = (condition, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = self.conditions[condition].to(like)
        return self._cache[key]

    # -- the prior interface ------------------------------------------------------------------------

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        return rgb_to_signed(rgb, SHAPE[1:])

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return signed_to_rgb(x)

    @torch.no_grad()
    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, conditions: Sequence[str],
                      view: View) -> torch.Tensor:
        a, s = (v.flatten() for v in self.schedule.a_s(t, z_t))
        z = z_t.flatten(1)
        out = []
        for condition in conditions:
            if condition not in self.conditions:
                raise UserError(f"unknown condition {condition!r}; use one of {(TEXT, UNCOND, NEGATIVE)}")
            x0 = self._converted(condition, z).posterior_mean(z, a, s)
            out.append(((z - a[:, None] * x0) / s[:, None]).view_as(z_t))
        return torch.stack(out)

    # -- ground truth -------------------------------------------------------------------------------

    def sample(self, n: int, k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n true samples [n, *SHAPE] of class k (default: the prompt's class). float64."""
        k = self.text_class if k is None else k
        xi = torch.randn(n, self.classes.lam.shape[-1], generator=generator, dtype=torch.float64)
        x = self.classes.mu[k] + (xi * self.classes.lam[k].sqrt()) @ self.classes.U[k].T
        return x.view(n, *SHAPE)

    def _offset(self, x: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.text_class if k is None else k
        v = x.detach().double().flatten(1).cpu() - self.classes.mu[k]
        return v, v @ self.classes.U[k]

    def detail(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Energy of x - mu_k along class k's directions over its expected value trace(Sigma_k), [B]:
        a true sample gives 1 on average, the class mean 0, an over-sharpened image more than 1."""
        _, c = self._offset(x, k)
        kk = self.text_class if k is None else k
        return (c ** 2).sum(-1) / self.classes.lam[kk].sum()

    def off_manifold(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Distance from class k's affine subspace mu_k + span(U_k), [B]: 0 for a true sample."""
        v, c = self._offset(x, k)
        kk = self.text_class if k is None else k
        return (v - c @ self.classes.U[kk].T).norm(dim=-1)

    def class_reached(self, x: torch.Tensor) -> torch.Tensor:
        """The class each x [B, ...] belongs to: the most likely component of the mixture seen at a
        small noise level (s = 0.1), so a point off every subspace goes to the nearest one. [B] long."""
        z = x.detach().double().flatten(1).cpu()
        one = torch.ones(len(z), dtype=torch.float64)
        return self.classes.log_components(z, one, 0.1 * one).argmax(dim=-1)
