"""Stable Diffusion pipelines with random weights, built from configs alone (no download).

Tests build a TINY one, save it with `save_pretrained` and load it back through
`StableDiffusionPrior.load`, the path users run. Benchmarks build one with the real SD 2.1-base
shapes, whose speed and memory match the real model's (weights do not change either).
"""
from __future__ import annotations

from pathlib import Path

import torch

# Stable Diffusion 2.1-base, as in its unet/, vae/ and text_encoder/ config.json files.
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20),  # diffusers' legacy name: the number of heads (64 channels each)
    cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32, norm_eps=1e-5,
    flip_sin_to_cos=True, freq_shift=0, act_fn="silu")
SD21_BASE_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, sample_size=768, act_fn="silu")
SD21_BASE_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
    max_position_embeddings=77, projection_dim=512, hidden_act="gelu", layer_norm_eps=1e-5)

# The smallest shapes diffusers accepts: 8x8 latents from 16x16 renders.
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8, cross_attention_dim=32, norm_num_groups=32)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=32, sample_size=16)
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
    max_position_embeddings=128, projection_dim=32)  # 128: byte-level tokens are single characters

SIZES = {"tiny": (TINY_UNET, TINY_VAE, TINY_TEXT), "sd21-base": (SD21_BASE_UNET, SD21_BASE_VAE, SD21_BASE_TEXT)}


def byte_level_tokenizer(max_length: int = 77):
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (with and without CLIP's end-of-word
    mark) and no merges: every prompt tokenizes, one token per character, with nothing to download."""
    from transformers import CLIPTokenizer

    # GPT-2/CLIP's byte -> printable unicode map: printable bytes map to themselves, the rest to 256+.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab[symbol] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def random_components(size: str = "tiny", seed: int = 0) -> dict:
    """unet, vae, text_encoder, tokenizer and scheduler of a random-weight SD pipeline (float32, CPU)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config, vae_config, text_config = SIZES[size]
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer(text_config["max_position_embeddings"])
    # the real vocabulary size where given (its embedding is 0.1 GB of VRAM); byte tokens use the first 514 ids
    text_config = {"vocab_size": len(tokenizer), **text_config}
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **text_config))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", steps_offset=1, clip_sample=False)
    return dict(unet=UNet2DConditionModel(**unet_config), vae=AutoencoderKL(**vae_config),
                text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=scheduler)


def save_random_pipeline(folder: str | Path, size: str = "tiny", seed: int = 0,
                         dtype: torch.dtype = torch.float32) -> Path:
    """Write a random-weight SD pipeline as a diffusers folder (what `hf download` gives); float16 halves
    the files of the full-size one (2.6 GB instead of 5.2), as the fp16 downloads do."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**random_components(size, seed), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(dtype=dtype).save_pretrained(folder)
    return Path(folder)


if __name__ == "__main__":  # python -m backend.priors.sd_random FOLDER --size sd21-base --dtype float16
    import argparse

    parser = argparse.ArgumentParser(description="write a random-weight Stable Diffusion folder")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(save_random_pipeline(args.folder, args.size, args.seed, getattr(torch, args.dtype)))
