"""The reference for bench/bench_sd.py: a plain threestudio-style SDS step written straight on diffusers'
UNet and VAE (threestudio's StableDiffusionGuidance with its defaults: guidance 100, t ~ U{20 .. 980},
w(t) = 1 - abar_t, the VAE at 512 and a latent sample). No graphs, no caches, nothing of backend/priors:
what a user of diffusers would write, timed beside the project's prior in the same process.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class PlainSDS:
    def __init__(self, unet, vae, text_embeddings: torch.Tensor, alphas_cumprod: torch.Tensor, guidance: float = 100.0,
                 min_step: int = 20, max_step: int = 980, resolution: int = 512):
        """text_embeddings [2, L, D]: the prompt's and the empty prompt's CLIP embeddings."""
        self.unet, self.vae, self.guidance = unet, vae, guidance
        self.embeddings = text_embeddings.to(unet.device, unet.dtype)
        self.alphas = alphas_cumprod.to(unet.device, torch.float32)
        self.min_step, self.max_step, self.resolution = min_step, max_step, resolution
        self.unet_calls = 0

    def loss(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb [B, 3, H, W] in [0, 1] -> the SDS surrogate loss, whose gradient on the latents is w(t) (e_s - eps)."""
        b = rgb.shape[0]
        image = F.interpolate(rgb, (self.resolution,) * 2, mode="bilinear", align_corners=False) * 2.0 - 1.0
        latents = self.vae.encode(image.to(self.vae.dtype)).latent_dist.sample() * self.vae.config.scaling_factor
        t = torch.randint(self.min_step, self.max_step + 1, [b], dtype=torch.long, device=rgb.device)
        self.unet_calls += 1
        with torch.no_grad():
            noise = torch.randn_like(latents)
            a = self.alphas[t].view(-1, 1, 1, 1)
            noisy = (a.sqrt() * latents + (1 - a).sqrt() * noise).to(self.unet.dtype)
            e = self.unet(torch.cat([noisy] * 2), torch.cat([t] * 2),
                          encoder_hidden_states=self.embeddings.repeat_interleave(b, dim=0)).sample
            e_text, e_uncond = e.float().chunk(2)
            e_guided = e_uncond + self.guidance * (e_text - e_uncond)
            grad = torch.nan_to_num((1 - a) * (e_guided - noise))
        target = (latents - grad).detach()
        return 0.5 * F.mse_loss(latents.float(), target.float(), reduction="sum") / b
