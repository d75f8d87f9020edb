"""The field's hash encoding and MLP heads as `torch.compile`d functions: the fast field on CUDA when
tiny-cuda-nn is not installed (the common case on Windows and in Blender users' machines).

`TorchHashGrid` (encoding.py) is written for the CPU: level by level and block by block, a few dozen
small ops each, and `FusedHeads` (heads.py) walks the samples in cache-sized blocks. On a GPU those
become thousands of tiny kernels whose launches cost more than their work. Here each level is one
plain function of all samples (corner indices, gather, trilinear weights, value and Jacobian) that
Inductor fuses into a few kernels, forward and backward (AOTAutograd derives the backward, the table
gradient being one scatter-add); the heads are two matrix products with fused pointwise work around
them. The numbers are TorchHashGrid's: the same tables, the same hash, the same Jacobian (tests).

Choice: `torch.compile` over a hand-written Triton kernel because Inductor writes the backward too
(the Jacobian's backward reaches the tables: normals are trained through it), the same source runs
eagerly as its own reference, and it compiles on the CPU as well, so the CPU suite checks it. It is
used on CUDA only (`compiled_usable`): on the CPU the hand-blocked TorchHashGrid is the faster one
(docs/gpu.md), and compiling there costs a minute. DISTILL3D_COMPILE=0 turns it off.

Compiled graphs: one per (dense or hashed level, with or without Jacobian) and one for the heads,
with dynamic sample counts and level sizes, so the occupancy sampler's changing N and the progressive
levels never recompile.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from .encoding import PRIMES, TorchHashGrid

logger = logging.getLogger(__name__)

# The 8 cell corners as (x, y, z) offsets.
_CORNERS = [(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)]


def encode_level(unit: torch.Tensor, table: torch.Tensor, resolution: int, dense: bool, hash_mask: int,
                 with_jacobian: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One level of instant-ngp's encoding for unit-cube points [N, 3]: features [N, F] and, if asked,
    their derivative in the point [N, 3, F] (d cell / d point = resolution / 2). Plain tensor maths, so
    torch.compile fuses it and autograd differentiates both outputs into the table."""
    grid = unit * resolution
    cell = grid.floor().clamp(max=resolution - 1)
    frac = grid - cell                                                         # [N, 3]
    cell = cell.long()
    corners = torch.tensor(_CORNERS, device=unit.device)                       # [8, 3]
    c = cell[:, None, :] + corners                                             # [N, 8, 3]
    if dense:                       # row x + y V + z V^2 (encoding._Level.corners)
        vertices = resolution + 1
        index = c[..., 0] + c[..., 1] * vertices + c[..., 2] * (vertices * vertices)
    else:                           # instant-ngp eq. (4), mod T
        index = ((c[..., 0] * PRIMES[0]) & hash_mask) ^ ((c[..., 1] * PRIMES[1]) & hash_mask) \
            ^ ((c[..., 2] * PRIMES[2]) & hash_mask)
    values = table[index]                                                      # [N, 8, F]
    upper = corners.to(unit.dtype)                                             # 1 where the corner is the upper one
    w = upper * frac[:, None, :] + (1.0 - upper) * (1.0 - frac[:, None, :])    # [N, 8, 3] per-axis weights
    features = (values * w.prod(-1, keepdim=True)).sum(1)                      # trilinear: [N, F]
    if not with_jacobian:
        return features, None
    sign = 2.0 * upper - 1.0                                                   # d w / d frac
    dw = torch.stack([sign[:, 0] * w[..., 1] * w[..., 2], w[..., 0] * sign[:, 1] * w[..., 2],
                      w[..., 0] * w[..., 1] * sign[:, 2]], dim=-1)             # [N, 8, 3]
    jacobian = torch.einsum("nkf,nka->naf", values, dw) * (0.5 * resolution)   # [N, 3, F]
    return features, jacobian


def heads(features: torch.Tensor, w_hidden: torch.Tensor, w_density: torch.Tensor, w_albedo: torch.Tensor):
    """FusedHeads' maths for all samples at once (heads.py has the equations): raw density [N], albedo
    logits [N, 3] and d raw / d features [N, L F]."""
    hidden = w_density.shape[1]
    h = features @ w_hidden.t()
    h_density, h_albedo = F.relu(h[:, :hidden]), F.relu(h[:, hidden:])
    raw = (h_density @ w_density.t())[:, 0]
    raw_grad = ((h[:, :hidden] > 0).to(h.dtype) * w_density) @ w_hidden[:hidden]
    return raw, h_albedo @ w_albedo.t(), raw_grad


class CompiledHashGrid(TorchHashGrid):
    """TorchHashGrid's tables and levels, evaluated by `encode_level` (compiled unless compile=False) and
    carrying the compiled `heads` for RadianceField.forward."""

    def __init__(self, settings, compile: bool = True):
        super().__init__(settings)
        self._encode = _Compiled(encode_level) if compile else encode_level
        self.heads = _Compiled(heads) if compile else heads

    def forward(self, points: torch.Tensor, with_jacobian: bool = False):
        n, n_active = points.shape[0], self.n_active
        unit = ((points.detach() + 1.0) * 0.5).clamp(0.0, 1.0)
        outputs = [self._encode(unit, table, level.resolution, level.dense, level.hash_mask, with_jacobian)
                   for level, table in zip(self.levels[:n_active], self.tables[:n_active])]
        active = torch.cat([f for f, _ in outputs], dim=1) if outputs else points.new_zeros(n, 0)
        features = F.pad(active, (0, self.out_dim - active.shape[1]))
        if not with_jacobian:
            return features
        jacobian = torch.cat([j for _, j in outputs], dim=2) if outputs else points.new_zeros(n, 3, 0)

        def pullback(grad_features: torch.Tensor) -> torch.Tensor:
            return torch.einsum("naf,nf->na", jacobian, grad_features[:, :active.shape[1]])   # [N, 3]

        return features, pullback


class _Compiled:
    """torch.compile(fn), falling back to fn itself (same numbers, more kernels) if compiling fails."""

    def __init__(self, fn):
        self.fn, self.compiled, self.failed = fn, torch.compile(fn, dynamic=True), False

    def __call__(self, *args):
        if not self.failed:
            try:
                return self.compiled(*args)
            except Exception as error:  # noqa: BLE001 - a compiler failure has many types
                self.failed = True
                logger.warning("torch.compile failed for the field's %s (%s: %s); running it eagerly",
                               self.fn.__name__, type(error).__name__, str(error)[:200])
        return self.fn(*args)


def compiled_usable(device: torch.device | str | None) -> bool:
    """Whether the field should use the compiled encoding: on CUDA, unless DISTILL3D_COMPILE=0 or
    torch.compile has no GPU backend (Triton) here."""
    if device is None or torch.device(device).type != "cuda" or os.environ.get("DISTILL3D_COMPILE", "1") == "0":
        return False
    try:
        import triton  # noqa: F401 - Inductor's GPU code generator
    except ImportError:
        logger.warning("triton is not installed: using the eager PyTorch hash encoding on CUDA")
        return False
    return True
