"""Volume rendering of packed samples (Max 1995; NeRF eq. 3):
    alpha_i = 1 - exp(-sigma_i delta),  T_i = exp(-sum_{j<i} sigma_j delta),  w_i = T_i alpha_i,
    C = sum_i w_i c_i.
Samples of one ray are contiguous and ordered near to far (sampler.RaySamples)."""
from __future__ import annotations

import torch


def transmittance(sigma_delta: torch.Tensor, ray: torch.Tensor, n_rays: int) -> torch.Tensor:
    """T_i, the light reaching sample i from the camera, [S]. The running sum over the packed list
    is taken in float64: it spans all rays, and in float32 its rounding would show in late rays."""
    total = torch.cumsum(sigma_delta.double(), 0)
    exclusive = total - sigma_delta.double()
    counts = torch.zeros(n_rays, dtype=ray.dtype, device=ray.device).index_add_(0, ray, torch.ones_like(ray))
    # (index_add_ rather than bincount: on CUDA bincount reads the largest index back to the host)
    first = (torch.cumsum(counts, 0) - counts)[ray]
    return torch.exp(-(exclusive - exclusive[first])).to(sigma_delta.dtype)


def weights(sigma: torch.Tensor, step: float, ray: torch.Tensor, n_rays: int) -> torch.Tensor:
    """w_i = T_i alpha_i, [S]."""
    sigma_delta = sigma * step
    return transmittance(sigma_delta, ray, n_rays) * (1.0 - torch.exp(-sigma_delta))


def accumulate(values: torch.Tensor, ray: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Per-ray sums of values [S, C] -> [R, C]. A flat 1-D index_add: on CPU the 2-D one loops row
    by row and is several times slower."""
    channels = values.shape[1]
    flat = (ray[:, None] * channels + torch.arange(channels, device=ray.device)).reshape(-1)
    out = values.new_zeros(n_rays * channels).index_add(0, flat, values.reshape(-1))
    return out.view(n_rays, channels)
