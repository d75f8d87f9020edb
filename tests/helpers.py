"""Small builders that several test modules share (fixtures are in tests/conftest.py)."""
import math

import numpy as np
import torch

from backend.cameras import sample_cameras, sample_light_positions
from backend.nerf import NeRFSettings
from backend.priors.base import View

PROMPT = "a red cube"
SMALL = NeRFSettings(hash_levels=6, log2_table=12, base_resolution=4, per_level_scale=2.0, levels_start=6)  # a fast field


def random_view(n, size=16, seed=0):
    """n random training cameras with lights, a white background and full opacity (a prior's input)."""
    generator = torch.Generator().manual_seed(seed)
    cameras = sample_cameras(n, size, size, generator)
    return View(cameras, "lambertian", sample_light_positions(cameras, generator), torch.ones(n, 3, size, size),
                torch.ones(n, 1, size, size))


# ---- Fields and meshes whose truth is known (the export tests, tests/test_export_*.py) ----------

WIDTH = 0.02  # density falloff (world units) of the test fields


class SDFField:
    """A field with a known surface: density 100 * sigmoid(-sdf / w - ln 3) equals the default
    export threshold 25 exactly on sdf = 0. Albedo: smooth and different along every axis, so a
    texel read at the wrong place or a wrong axis shows."""

    def __init__(self, sdf, scale: float = 100.0, shape: str | None = None):
        self.sdf, self.scale, self.shape = sdf, scale, shape   # shape: a catalog name, for metrics

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.sigmoid(-self.sdf(points) / WIDTH - math.log(3.0))

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return (0.5 + 0.45 * torch.tanh(points * torch.tensor([2.0, -1.5, 1.0]))).clamp(0.0, 1.0)


def box_sdf(center, half):
    center, half = torch.tensor(center), torch.tensor(half)

    def sdf(points):
        q = (points - center).abs() - half
        return q.clamp(min=0.0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0.0)
    return sdf


# an off-centre box, longest along backend y: a wrong axis or a mirrored frame shows in its bounds
ASYMMETRIC = dict(center=[0.25, -0.1, 0.05], half=[0.3, 0.45, 0.2])


def single_fan_everywhere(faces: np.ndarray) -> bool:
    """Each vertex's opposite edges form one closed cycle: one disc of faces around it (no two
    sheets meeting at the vertex). Written plainly, apart from the export's own check."""
    link: dict[int, dict[int, int]] = {}
    for a, b, c in faces.tolist():
        for v, p, q in ((a, b, c), (b, c, a), (c, a, b)):
            if p in link.setdefault(v, {}):
                return False
            link[v][p] = q
    for cycle in link.values():
        first = next(iter(cycle))
        at, steps = cycle[first], 1
        while at != first and at in cycle and steps <= len(cycle):
            at, steps = cycle[at], steps + 1
        if at != first or steps != len(cycle):
            return False
    return True
