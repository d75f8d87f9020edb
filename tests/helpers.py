"""Small builders that several test modules share (fixtures are in tests/conftest.py)."""
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
