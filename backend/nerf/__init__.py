"""The 3D model: a hash-grid radiance field rendered by a PyTorch volume renderer.

Public surface (what backend.train, backend.export and the server use):

    model = NeRFModel(NeRFSettings(...)).to(device)
    out = model.render(cameras, shading="lambertian", light_positions=lights)   # RenderOutput
    model.density(points)  -> [N]     softplus density + blob bias, points [N, 3] in [-1, 1]^3
    model.albedo(points)   -> [N, 3]  in [0, 1]
    model.set_active_levels(n); model.update_occupancy()
    model.field_parameters(), model.background_parameters()   (Adam param groups)
"""
from .model import NeRFModel, NeRFSettings, RenderOutput

__all__ = ["NeRFModel", "NeRFSettings", "RenderOutput"]
