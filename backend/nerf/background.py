"""Background colour as a function of the view direction only (threestudio's
"neural-environment-map-background"): real spherical harmonics of the direction up to degree 2,
a small MLP, sigmoid RGB. Kept separate so it gets its own, lower learning rate."""
from __future__ import annotations

import torch
from torch import nn


def spherical_harmonics(dirs: torch.Tensor) -> torch.Tensor:
    """Real SH basis, bands 0-2, of unit directions [N, 3] -> [N, 9] (standard normalisation)."""
    x, y, z = dirs.unbind(-1)
    return torch.stack([
        torch.full_like(x, 0.28209479),
        0.48860251 * y, 0.48860251 * z, 0.48860251 * x,
        1.09254843 * x * y, 1.09254843 * y * z, 0.31539157 * (3.0 * z * z - 1.0),
        1.09254843 * x * z, 0.54627421 * (x * x - y * y),
    ], dim=-1)


class Background(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(9, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 3))

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        """Unit ray directions [N, 3] -> RGB [N, 3] in [0, 1]."""
        return torch.sigmoid(self.mlp(spherical_harmonics(dirs)))
