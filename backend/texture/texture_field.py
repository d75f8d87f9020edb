"""The texture model: an albedo field on a fixed mesh, and its renderer.

The field is the NeRF field's albedo path alone (backend/nerf/field.py): the same hash encoding
(instant-ngp, make_encoding: tiny-cuda-nn or compiled on CUDA, PyTorch on the CPU) into one hidden layer
of 64 ReLU units without biases and a sigmoid, so it starts at albedo 0.5 everywhere. There is no
density: the geometry is the mesh.

A render casts one ray per pixel at the mesh (raycast.py) and queries the field once per hit, where the
NeRF marches up to max_samples_per_ray samples per ray. Pixels the mesh does not cover show the learned
background (backend/nerf/background.py, the NeRF's), with opacity 0; covered pixels have opacity 1 and
are shaded like the NeRF's samples (backend/shading.py) with the hit's normal.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..cameras import Cameras
from ..errors import UserError
from ..nerf.background import Background
from ..nerf.field import CHUNK
from ..nerf.hash_encoding import make_encoding
from ..shading import SHADING_MODES, shade
from .raycast import MeshRaycaster

# Rays per pixel side: each pixel averages SUPERSAMPLE^2 hits, so edges (the silhouette, and a pattern's
# borders) are anti-aliased as a camera's pixels are, and as the exact prior renders its objects (its
# SUPERSAMPLE). Casting and one field query per ray are a small part of a step (docs/selection.md).
SUPERSAMPLE = 2

# Shading modes a texture step can learn from: a textureless render (the light on white) does not
# depend on the albedo, so texture mode never draws it (docs/selection.md, "Texture mode").
TEXTURE_SHADING = ("albedo", "lambertian")


class TextureField(nn.Module):
    """Albedo [N, 3] in [0, 1] of points [N, 3] in [-1, 1]^3 (points outside clamp to the box's faces)."""

    def __init__(self, settings, device: torch.device | str | None = None):
        super().__init__()
        self.encoding = make_encoding(settings, device)
        self.hidden = nn.Linear(self.encoding.out_dim, settings.hidden, bias=False, device=device)
        self.out = nn.Linear(settings.hidden, 3, bias=False, device=device)

    def set_active_levels(self, n: int) -> None:
        self.encoding.set_active_levels(n)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(F.relu(self.hidden(self.encoding(points)))))

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """Chunked, so any N fits in memory (the bake and the metrics)."""
        return torch.cat([self(chunk) for chunk in points.split(CHUNK)]) if len(points) > CHUNK else self(points)


@dataclass
class TextureRender:
    """The fields backend.train's helpers (augment_background, make_view) read, [B, H, W, C] each."""
    rgb: torch.Tensor         # shaded, composited over the background
    opacity: torch.Tensor     # [B, H, W, 1]: 1 where the mesh is hit
    albedo: torch.Tensor      # unshaded colour over the background
    background: torch.Tensor


class TextureModel(nn.Module):
    """The trainable texture (field + background) on a fixed mesh given in field coordinates."""

    def __init__(self, settings, raycaster: MeshRaycaster, device: torch.device | str | None = None,
                 supersample: int = SUPERSAMPLE):
        super().__init__()
        self.supersample = supersample
        self.field = TextureField(settings, device)
        self.background = Background(settings.background_hidden).to(device or "cpu")
        self.raycaster = raycaster

    def field_parameters(self):
        return self.field.parameters()

    def background_parameters(self):
        return self.background.parameters()

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return self.field.albedo(points)

    def set_active_levels(self, n: int) -> None:
        self.field.set_active_levels(n)

    def render(self, cameras: Cameras, shading: str, light_positions: torch.Tensor) -> TextureRender:
        """Render the cameras: supersample^2 rays per pixel, averaged (a box filter)."""
        if shading not in SHADING_MODES:
            raise UserError(f"unknown shading mode {shading!r}: use one of {', '.join(SHADING_MODES)}")
        ss = self.supersample
        fine = Cameras(cameras.c2w, cameras.fovy, cameras.elevation, cameras.azimuth, cameras.distance,
                       cameras.height * ss, cameras.width * ss)
        images = self._render_rays(fine, shading, light_positions)
        if ss > 1:  # [B, H ss, W ss, C] -> [B, H, W, C], the mean of each pixel's subsamples
            images = [F.avg_pool2d(x.permute(0, 3, 1, 2), ss).permute(0, 2, 3, 1) for x in images]
        return TextureRender(*images)

    def _render_rays(self, cameras: Cameras, shading: str, light_positions: torch.Tensor) -> list[torch.Tensor]:
        """One ray per pixel of `cameras`: [rgb, opacity, albedo, background], each [B, H, W, C]."""
        hits = self.raycaster.hits(cameras)
        batch, height, width = hits.mask.shape
        mask = hits.mask.reshape(-1)
        index = mask.nonzero().squeeze(1)
        pixel_camera = index.div(height * width, rounding_mode="floor")
        points, normals = hits.points.reshape(-1, 3)[index], hits.normals.reshape(-1, 3)[index]
        albedo = self.field(points)                                          # one query per covered ray
        color = shade(albedo, normals, points, light_positions.to(points)[pixel_camera], shading)
        _, dirs = cameras.to(mask.device).rays()
        background = self.background(dirs.reshape(-1, 3))
        opacity = mask.to(background.dtype)[:, None]
        behind = background * (1.0 - opacity)
        image = lambda x: x.reshape(batch, height, width, -1)  # noqa: E731
        return [image(behind.index_add(0, index, color)), image(opacity), image(behind.index_add(0, index, albedo)),
                image(background)]
