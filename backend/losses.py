"""The 3D loop's loss: the surrogate that carries the method's gradient g, plus the regularisers on
the NeRF (DreamFusion's orientation penalty, the opacity sparsity term) and their weights over the run.
The equations and defaults are in docs/methods.md ("The NeRF side").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .methods.base import gradient_loss  # the surrogate carrying g: d loss / d x = g / B


def orientation_loss(render) -> torch.Tensor:
    """DreamFusion's orientation penalty of a render (backend.nerf RenderOutput), sum_i stop_grad(w_i)
    max(0, n_i . d_i)^2 per ray, mean over all rays: it penalises normals that face away from the camera
    (d is the ray direction, camera -> point). Reads the per-sample weights [S], normals [S, 3] and ray
    directions [S, 3]; the number of rays is the pixels of render.opacity [B, H, W, 1]."""
    facing_away = F.relu((render.normals * render.view_dirs).sum(-1))
    return (render.weights.detach() * facing_away ** 2).sum() / render.opacity[..., 0].numel()


def sparsity_loss(opacity: torch.Tensor) -> torch.Tensor:
    """threestudio's opacity sparsity, mean sqrt(alpha^2 + 0.01): pushes rays to empty or opaque."""
    return torch.sqrt(opacity ** 2 + 0.01).mean()


def orientation_weight(step: int, config) -> float:
    """Linear ramp lambda_orientation -> lambda_orientation_end over orientation_ramp_steps."""
    f = min(1.0, step / max(1, config.orientation_ramp_steps))
    return config.lambda_orientation + f * (config.lambda_orientation_end - config.lambda_orientation)


def total_loss(x: torch.Tensor, g: torch.Tensor, render, step: int, config, guide=None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to back-propagate, the score-distillation part alone) for one step. `guide`: the shape
    guide of a run started from a mesh (backend/shape_guide.py ShapeGuide), drawing its points from
    `generator`."""
    loss_sd = gradient_loss(x, g)
    loss = loss_sd + orientation_weight(step, config) * orientation_loss(render)
    if config.lambda_sparsity > 0:
        loss = loss + config.lambda_sparsity * sparsity_loss(render.opacity)
    shape = guide(step, generator) if guide is not None else None
    if shape is not None:
        loss = loss + shape
    return loss, loss_sd
