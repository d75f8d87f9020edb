"""Cameras on an orbit around the object: random ones for training, fixed ones for previews.

World convention (used everywhere in the backend): right-handed, +Z up, the object inside the
unit cube [-1, 1]^3. Azimuth 0 looks at the object's front from +X; azimuth 90 from +Y.
Elevation is measured up from the XY plane. Camera-to-world matrices use the OpenGL convention
(the camera looks down its -Z axis, +Y is up in the image).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# threestudio's DreamFusion-SD ranges (docs/methods.md, "The NeRF side"), except the lowest elevation:
# from -10 degrees the underside is seen only at a grazing angle, so nothing holds it flat and it
# bulges (issue 19); from -30 the cube's bottom still came out a shallow dish; from -45, as low as the
# highest views, it is as flat as the top (docs/quality.md, "The underside, from -45 degrees").
DISTANCE_RANGE = (1.5, 2.0)
FOVY_RANGE_DEG = (40.0, 70.0)
ELEVATION_RANGE_DEG = (-45.0, 45.0)
AZIMUTH_RANGE_DEG = (-180.0, 180.0)
LIGHT_DISTANCE_RANGE = (0.8, 1.5)  # times the camera distance


@dataclass
class Cameras:
    """A batch of B pinhole cameras that all render height x width pixels."""

    c2w: torch.Tensor        # [B, 4, 4] camera-to-world
    fovy: torch.Tensor       # [B] vertical field of view, radians
    elevation: torch.Tensor  # [B] degrees
    azimuth: torch.Tensor    # [B] degrees, in [-180, 180)
    distance: torch.Tensor   # [B]
    height: int
    width: int

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index: slice) -> "Cameras":
        return Cameras(self.c2w[index], self.fovy[index], self.elevation[index], self.azimuth[index],
                       self.distance[index], self.height, self.width)

    @property
    def positions(self) -> torch.Tensor:
        return self.c2w[:, :3, 3]

    def rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ray origins and unit directions through pixel centres, each [B, H, W, 3]."""
        device = self.c2w.device
        focal = 0.5 * self.height / torch.tan(0.5 * self.fovy)                      # [B]
        j = torch.arange(self.width, device=device, dtype=torch.float32) + 0.5
        i = torch.arange(self.height, device=device, dtype=torch.float32) + 0.5
        ii, jj = torch.meshgrid(i, j, indexing="ij")
        x = (jj - 0.5 * self.width)[None] / focal[:, None, None]
        y = -(ii - 0.5 * self.height)[None] / focal[:, None, None]
        dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)                 # [B, H, W, 3]
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], dirs_cam)
        dirs = F.normalize(dirs, dim=-1)
        origins = self.positions[:, None, None, :].expand_as(dirs)
        return origins, dirs

    def to(self, device: torch.device | str) -> "Cameras":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731  (no host wait for a copy to the GPU)
        return Cameras(move(self.c2w), move(self.fovy), move(self.elevation), move(self.azimuth),
                       move(self.distance), self.height, self.width)


def orbit_cameras(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, distance: torch.Tensor,
                  fovy_deg: torch.Tensor, height: int, width: int) -> Cameras:
    """Cameras on a sphere around the origin, looking at the origin, +Z up."""
    elev = torch.deg2rad(elevation_deg.float())
    azi = torch.deg2rad(azimuth_deg.float())
    position = distance[:, None] * torch.stack(
        [torch.cos(elev) * torch.cos(azi), torch.cos(elev) * torch.sin(azi), torch.sin(elev)], dim=-1)
    forward = F.normalize(-position, dim=-1)
    up_world = torch.tensor([0.0, 0.0, 1.0], device=position.device).expand_as(forward)
    right = F.normalize(torch.cross(forward, up_world, dim=-1), dim=-1)
    up = torch.cross(right, forward, dim=-1)
    c2w = torch.eye(4, device=position.device).repeat(len(position), 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -forward, position
    azimuth_wrapped = (azimuth_deg.float() + 180.0) % 360.0 - 180.0
    return Cameras(c2w, torch.deg2rad(fovy_deg.float()), elevation_deg.float(), azimuth_wrapped,
                   distance.float(), height, width)


def _uniform(n: int, low_high: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = low_high
    return low + (high - low) * torch.rand(n, generator=generator)


def sample_cameras(n: int, height: int, width: int, generator: torch.Generator) -> Cameras:
    """Random training cameras with the ranges of the common baseline (docs/methods.md)."""
    return orbit_cameras(_uniform(n, ELEVATION_RANGE_DEG, generator), _uniform(n, AZIMUTH_RANGE_DEG, generator),
                         _uniform(n, DISTANCE_RANGE, generator), _uniform(n, FOVY_RANGE_DEG, generator),
                         height, width)


def sample_light_positions(cameras: Cameras, generator: torch.Generator) -> torch.Tensor:
    """A point light near each camera (threestudio's scheme): the camera direction jittered a
    little, at 0.8-1.5 times the camera distance. Returns [B, 3]."""
    n = len(cameras)
    direction = F.normalize(cameras.positions.cpu() + 0.5 * torch.randn(n, 3, generator=generator), dim=-1)
    scale = _uniform(n, LIGHT_DISTANCE_RANGE, generator) * cameras.distance.cpu()
    return (direction * scale[:, None]).to(cameras.c2w.device)


def turntable_cameras(n: int, height: int, width: int, elevation_deg: float = 15.0, distance: float = 1.8,
                      fovy_deg: float = 55.0, device: torch.device | str = "cpu") -> Cameras:
    """n fixed cameras evenly around the object, starting at the front (azimuth 0)."""
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return orbit_cameras(full(elevation_deg), azimuth, full(distance), full(fovy_deg), height, width).to(device)


def view_suffix(elevation_deg: float, azimuth_deg: float) -> str:
    """DreamFusion's view-dependent prompt suffix (thresholds of docs/methods.md)."""
    if elevation_deg > 60.0:
        return "overhead view"
    azimuth = (azimuth_deg + 180.0) % 360.0 - 180.0
    if abs(azimuth) < 45.0:
        return "front view"
    if abs(azimuth) > 135.0:
        return "back view"
    return "side view"


VIEW_SUFFIXES = ("front view", "side view", "back view", "overhead view")


def front_camera(height: int, width: int, device: torch.device | str = "cpu") -> Cameras:
    """The single fixed camera of the 2D experiments."""
    return turntable_cameras(1, height, width, elevation_deg=15.0, distance=1.8, fovy_deg=55.0, device=device)
