"""Shading shared by the NeRF renderer and the built-in exact prior, so both mean the same picture.

Modes (threestudio's DreamFusion defaults): "albedo" (the colour alone), "lambertian" (colour lit by
a point light: ambient 0.1 + diffuse 0.9 * max(0, n.l)), "textureless" (the same light on white).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

AMBIENT = 0.1
DIFFUSE = 0.9
SHADING_MODES = ("albedo", "lambertian", "textureless")


def shade(albedo: torch.Tensor, normal: torch.Tensor, points: torch.Tensor, light_position: torch.Tensor,
          mode: str) -> torch.Tensor:
    """Colour of surface points. albedo [..., 3] in [0, 1]; normal, points [..., 3];
    light_position broadcastable to points. Returns [..., 3]."""
    if mode == "albedo":
        return albedo
    light_dir = F.normalize(light_position - points, dim=-1)
    lambert = (normal * light_dir).sum(-1, keepdim=True).clamp(min=0.0)
    light = AMBIENT + DIFFUSE * lambert
    if mode == "textureless":
        return light.expand_as(albedo)
    if mode == "lambertian":
        return albedo * light
    raise ValueError(f"unknown shading mode {mode!r}; use one of {SHADING_MODES}")
