"""The radiance field: density, albedo and normals of points in [-1, 1]^3.

One hash encoding feeds two small MLPs (threestudio's ImplicitVolume), each one hidden layer of 64
ReLU units without biases (as tiny-cuda-nn's fully fused MLP, so with the near-zero initial hash
features the field starts as the blob alone, albedo 0.5):
    density = softplus(raw + blob),  blob = 10 (1 - |p| / 0.5)  (Magic3D's bias, threestudio "blob_magic3d")
    (or, for a run started from a mesh, that mesh's bias grid: shape_start.py, built by backend/shape_guide.py)
    albedo  = sigmoid(3 outputs)

Normals are n = -grad(density) / |grad(density)| (DreamFusion §3.1). softplus' > 0 only scales the
gradient, so n = -normalize(grad(raw + blob)). With the PyTorch encoding the gradient is formed in
the forward pass, by the chain rule through the MLP's ReLU mask (heads.py) and the encoding's
Jacobian: the numbers autograd would give, without a double backward, also under torch.no_grad.
With tiny-cuda-nn it comes from autograd (double backward).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hash_encoding import make_encoding
from .heads import FusedHeads
from .shape_start import shape_bias

CHUNK = 1 << 18  # points per forward in density() / albedo(): bounds memory for the mesh exporter


@dataclass
class FieldSamples:
    density: torch.Tensor  # [N]
    albedo: torch.Tensor   # [N, 3] in [0, 1]
    normal: torch.Tensor   # [N, 3] unit, outward


class RadianceField(nn.Module):
    """Density and albedo at a point: hash encoding -> two small MLP heads, plus the density bias (the
    blob, or the shape start's grid). The NeRF's field; texture mode has its own (texture/texture_field.py)."""

    def __init__(self, settings, device: torch.device | str | None = None):
        super().__init__()
        self.blob_density = settings.blob_density
        self.blob_radius = settings.blob_radius
        self.hidden = settings.hidden
        self.encoding = make_encoding(settings, device)
        # The hidden layers of both MLPs stacked in one Linear (rows [:hidden] density, the rest
        # albedo): one matrix product over the samples instead of two. The MLPs share nothing else.
        self.hidden_layers = nn.Linear(self.encoding.out_dim, 2 * settings.hidden, bias=False, device=device)
        self.density_out = nn.Linear(settings.hidden, 1, bias=False, device=device)
        self.albedo_out = nn.Linear(settings.hidden, 3, bias=False, device=device)
        # The shape start (backend/shape_guide.py): empty for the blob. Buffers, so checkpoints carry them.
        self.register_buffer("shape_grid", torch.zeros(0, device=device))
        self.register_buffer("shape_settings", torch.zeros(0, device=device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The shape grid's size is data (empty for the blob): take the checkpoint's; a checkpoint from
        # before shape starts has none, so it loads as the blob.
        for name in ("shape_grid", "shape_settings"):
            saved = state_dict.setdefault(prefix + name, getattr(self, name).new_zeros(0))
            setattr(self, name, getattr(self, name).new_empty(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_active_levels(self, n: int) -> None:
        self.encoding.set_active_levels(n)

    def blob(self, points: torch.Tensor) -> torch.Tensor:
        """Magic3D's density bias: blob_density * (1 - |p| / blob_radius), or the shape start's."""
        if self.shape_grid.numel():
            return shape_bias(self.shape_grid, self.shape_settings, points)[0]
        return self.blob_density * (1.0 - points.norm(dim=-1) / self.blob_radius)

    def _raw_density(self, features: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(features @ self.hidden_layers.weight[:self.hidden].t())
        return self.density_out(hidden)[:, 0]

    def _albedo(self, features: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(features @ self.hidden_layers.weight[self.hidden:].t())
        return torch.sigmoid(self.albedo_out(hidden))

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """Softplus density [N] of points [N, 3]; chunked, so any N fits in memory."""
        return _chunked(points, lambda p: F.softplus(self._raw_density(self.encoding(p)) + self.blob(p)))

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """Albedo [N, 3] in [0, 1] of points [N, 3]; chunked."""
        return _chunked(points, lambda p: self._albedo(self.encoding(p)))

    def forward(self, points: torch.Tensor) -> FieldSamples:
        """Density, albedo and normal of points [N, 3], from one encoding pass."""
        if not self.encoding.has_jacobian:              # tiny-cuda-nn: autograd gives the gradient
            return self._forward_autograd(points)
        features, pullback = self.encoding(points, with_jacobian=True)
        heads = getattr(self.encoding, "heads", FusedHeads.apply)  # compiled.py brings its own on CUDA
        raw, albedo_logits, raw_grad_features = heads(
            features, self.hidden_layers.weight, self.density_out.weight, self.albedo_out.weight)
        raw = raw + self.blob(points)
        grad = pullback(raw_grad_features) + self._blob_grad(points)     # chain rule: d raw / d point
        return FieldSamples(F.softplus(raw), torch.sigmoid(albedo_logits), -F.normalize(grad, dim=-1))

    def _blob_grad(self, points: torch.Tensor) -> torch.Tensor:
        if self.shape_grid.numel():
            return shape_bias(self.shape_grid, self.shape_settings, points)[1]
        return -(self.blob_density / self.blob_radius) * F.normalize(points, dim=-1)

    def _forward_autograd(self, points: torch.Tensor) -> FieldSamples:
        create_graph = torch.is_grad_enabled()          # keep the graph only when training
        with torch.enable_grad():
            points = points.detach().requires_grad_(True)
            features = self.encoding(points)
            raw = self._raw_density(features)
            grad, = torch.autograd.grad(raw.sum(), points, create_graph=create_graph, allow_unused=True)
        grad = torch.zeros_like(points) if grad is None else grad  # an encoding without a gradient to points
        if not create_graph:
            raw, features, grad = raw.detach(), features.detach(), grad.detach()
        # the bias and its gradient in closed form: no double backward through the shape grid's sampler
        raw, grad = raw + self.blob(points.detach()), grad + self._blob_grad(points.detach())
        return FieldSamples(F.softplus(raw), self._albedo(features), -F.normalize(grad, dim=-1))


def _chunked(points: torch.Tensor, fn) -> torch.Tensor:
    if points.shape[0] <= CHUNK:
        return fn(points)
    return torch.cat([fn(chunk) for chunk in points.split(CHUNK)])
