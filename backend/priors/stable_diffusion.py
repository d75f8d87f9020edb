"""Stable Diffusion 1.x/2.x as a prior, through diffusers.

    x = VAE.encode(render resized to 512) * scaling_factor        latent_mode "vae" (DreamFusion-SD)
    x = A [rgb; 1], render resized to 64x64                       latent_mode "rgb" (cheap: no VAE)
    e(z_t, t, y) = UNet(z_t, t, CLIP(y)), for all conditions in ONE batched UNet call, without autograd

Gradients flow from x into the render through the VAE encoder, never through the UNet. On CUDA the
weights are float16, the UNet runs channels-last with PyTorch's SDPA attention (diffusers' default
AttnProcessor2_0); on the CPU everything is float32.

On CUDA the UNet call and the VAE encoder's forward + backward replay from CUDA graphs (cuda_graphs.py),
one per input shape, unless `cuda_graphs=False` or a memory option (attention slicing, VAE tiling,
cpu_offload) is on; then they run eagerly. `vae_channels_last` runs the VAE encoder channels-last
(bench/gpu_check.sh measures it both ways: docs/gpu.md).

"rgb" mode: the NeRF renders 3 channels but SD latents have 4, so the render goes through a fixed
per-pixel affine map A, fitted by least squares to the VAE's latents of flat colours when the model
loads (the linear latent previews of SD front-ends, run backwards). It costs a resize and a 4x4 matrix.

Text embeddings are cached per prompt string: the prompt, "" (the unconditional one), the negative
prompt, and the prompt plus each of cameras.VIEW_SUFFIXES when prompts are view dependent.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from shared.schema import SD_OPTIONS, SettingError, check_prior_options

from ..cameras import VIEW_SUFFIXES
from ..errors import UserError
from .base import CONDITIONS, NEGATIVE, TEXT, UNCOND, Prior, View
from .cuda_graphs import GraphedFunction
from .sd_loading import DEFAULT_MODEL, load_components, model_schedule, resolve_folder, weights_hash
from .sd_perp_neg import perp_neg_text, view_mixture

logger = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "v_prediction")
EMPTY = ""  # the unconditional prompt


def _option(name: str):
    """An option's default, from its declaration in shared/schema.py SD_OPTIONS."""
    return SD_OPTIONS[name].default


class StableDiffusionPrior(Prior):
    """A diffusers Stable Diffusion model behind the Prior interface. Build one with `load`."""

    name = "stable-diffusion"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None, latent_mode: str = _option("latent_mode"),
                 attention_slicing: bool = _option("attention_slicing"), vae_tiling: bool = _option("vae_tiling"),
                 cpu_offload: bool = _option("cpu_offload"), perp_neg: bool = _option("perp_neg"),
                 cuda_graphs: bool = _option("cuda_graphs"), vae_channels_last: bool = _option("vae_channels_last"),
                 model_id: str = "in-memory", weights_sha256: str | None = None):
        """Take loaded diffusers/transformers components (e.g. sd_random's) and place them on `device`.
        The options are shared/schema.py SD_OPTIONS'."""
        _check_options(latent_mode=latent_mode)
        self.device = torch.device(device)  # already resolved by the caller (train.resolve_device)
        self.dtype = dtype or default_dtype(self.device)
        self.latent_mode, self.perp_neg, self.cpu_offload = latent_mode, perp_neg, cpu_offload
        self.model_id, self.weights_sha256 = model_id, weights_sha256

        self.schedule = model_schedule(scheduler.config)
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserError(f"this model predicts {self.prediction_type!r}; only epsilon- and v-prediction "
                            "models (SD 1.x/2.x) work here")

        for module in (unet, vae, text_encoder):
            module.requires_grad_(False).eval()  # gradients reach the render through the VAE, no weight gets one
        self.unet = _place(unet, self.device, self.dtype)
        if self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
        if attention_slicing:
            self.unet.set_attention_slice("auto")  # less VRAM, replaces SDPA by sliced attention
        self.vae = _place(vae, self.device, self.dtype)
        if vae_tiling:
            self.vae.enable_tiling()
        self.set_vae_channels_last(vae_channels_last)
        # cpu_offload: the text encoder (0.7 GB in fp16 for SD 2.x) stays on the CPU; prompts are encoded
        # once per run and cached on the device, so this costs a second or so per new prompt set.
        self.text_device = torch.device("cpu") if cpu_offload else self.device
        self.text_encoder = _place(text_encoder, self.text_device,
                                   torch.float32 if self.text_device.type == "cpu" else self.dtype)
        self.tokenizer = tokenizer

        self.scaling_factor = float(vae.config.scaling_factor)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        size = int(unet.config.sample_size)
        self.latent_shape = (int(unet.config.in_channels), size, size)
        self.render_resolution = size * self.vae_scale if latent_mode == "vae" else size
        self.rgb_to_latent = self._fit_rgb_to_latent() if latent_mode == "rgb" else None

        self._embeddings: dict[str, torch.Tensor] = {}  # prompt -> [L, D] on the device, model dtype
        self._abar = self.schedule.alphas_cumprod.to(self.device, torch.float32)  # read by t on the device

        # Graphs need the whole model resident and a fixed kernel sequence: slicing, tiling and offloading
        # change either, so those run eagerly.
        graphs = cuda_graphs and self.device.type == "cuda" and not (attention_slicing or cpu_offload)
        self.unet_graphs = GraphedFunction(self._unet_eps, enabled=graphs, name="the UNet")
        self.vae_graphs = GraphedFunction(self._vae_mean, enabled=graphs and not vae_tiling, autograd=True,
                                          name="the VAE encoder")
        self.unet_calls = 0  # batched UNet calls made (replayed or eager), for bench_sd
        self.prompt: str | None = None
        self.negative: str | None = None
        self.view_dependent = True

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_MODEL, device: torch.device | str = "cpu", offline: bool = False,
             dtype: torch.dtype | None = None, **options) -> "StableDiffusionPrior":
        """Load a Hub id (downloaded to the HF cache on first use, unless offline) or a local diffusers
        folder. `options`: shared/schema.py SD_OPTIONS."""
        options = _check_options(**options)  # before the slow part
        device = torch.device(device)
        dtype = dtype or default_dtype(device)
        folder = resolve_folder(str(name_or_path), offline)
        components = load_components(folder, dtype)
        return cls(**components, device=device, dtype=dtype, **options, model_id=str(name_or_path),
                   weights_sha256=weights_hash(Path(folder)))

    # ---- prompts -------------------------------------------------------------------------------

    def set_prompts(self, prompt: str, negative: str | None = None, view_dependent: bool = True) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("the prompt is empty: give a description, e.g. \"a red cube\"")
        self.prompt, self.negative, self.view_dependent = prompt, negative, view_dependent
        if self.perp_neg and not view_dependent:
            logger.warning("Perp-Neg needs view-dependent prompts (its negatives are the other views); it is off")
        prompts = [prompt, EMPTY] + ([negative] if negative is not None else [])
        if view_dependent:
            prompts += [self._view_prompt(suffix) for suffix in VIEW_SUFFIXES]
        self._encode(prompts)

    def _view_prompt(self, suffix: str) -> str:
        return f"{self.prompt}, {suffix}"

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> None:
        """CLIP-encode the prompts not cached yet, in one batch (as StableDiffusionPipeline.encode_prompt)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeddings]
        if not missing:
            return
        max_length = self.tokenizer.model_max_length
        tokens = self.tokenizer(missing, padding="max_length", max_length=max_length, truncation=True,
                                return_tensors="pt")
        for prompt, used in zip(missing, tokens.attention_mask.sum(dim=1).tolist()):
            if used >= max_length:  # no padding left: the prompt filled the context, anything longer was cut
                logger.warning("the prompt %r fills all of CLIP's %d tokens; any words past that are ignored",
                               prompt, max_length)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.text_device)
        hidden = self.text_encoder(tokens.input_ids.to(self.text_device), attention_mask=mask)[0]
        for prompt, embedding in zip(missing, hidden):
            self._embeddings[prompt] = embedding.to(self.device, self.dtype)

    def _embedding(self, prompt: str) -> torch.Tensor:
        if self.prompt is None:
            raise RuntimeError("call set_prompts before predict_noise")
        return self._embeddings[prompt]

    def _condition_embeddings(self, condition: str, view: View | None, batch: int) -> torch.Tensor:
        """[B, L, D]: the text embedding of `condition` for each sample of the batch."""
        if condition == UNCOND:
            return self._embedding(EMPTY).expand(batch, -1, -1)
        if condition == NEGATIVE:
            if self.negative is None:
                raise UserError("this method needs a negative prompt but none was set: pass one (--negative)")
            return self._embedding(self.negative).expand(batch, -1, -1)
        if condition != TEXT:
            raise ValueError(f"unknown condition {condition!r}: use one of {CONDITIONS}")
        if not self.view_dependent or view is None:
            return self._embedding(self.prompt).expand(batch, -1, -1)
        # DreamFusion's view-dependent prompt: each camera picks its own suffix, chosen on the device (no sync).
        views = torch.stack([self._embedding(self._view_prompt(s)) for s in VIEW_SUFFIXES])   # [4, L, D]
        return views[view_indices(view.cameras.elevation, view.cameras.azimuth).to(self.device)]

    def _perp_neg_embeddings(self, view: View) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per camera: the interpolated positive embedding [B, L, D], the two negative view embeddings
        [2, B, L, D] and their weights [B, 2] (sd_perp_neg)."""
        views = torch.stack([self._embedding(self._view_prompt(s)) for s in VIEW_SUFFIXES])  # [4, L, D]
        mixtures = [view_mixture(e, a) for e, a in zip(view.cameras.elevation.tolist(), view.cameras.azimuth.tolist())]
        positive = torch.tensor([m[0] for m in mixtures], device=self.device, dtype=torch.float32)
        positive = torch.einsum("bv,vld->bld", positive, views.float()).to(self.dtype)
        negatives = views[torch.tensor([m[1] for m in mixtures], device=self.device)].transpose(0, 1)
        weights = torch.tensor([m[2] for m in mixtures], device=self.device)
        return positive, negatives, weights

    def set_vae_channels_last(self, on: bool) -> None:
        """Run the VAE (weights and input) channels-last, on CUDA only (where cuDNN has kernels for it)."""
        self.vae_channels_last = on and self.device.type == "cuda"
        self.vae.to(memory_format=torch.channels_last if self.vae_channels_last else torch.contiguous_format)

    # ---- latents -------------------------------------------------------------------------------

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """Render [B, 3, H, W] in [0, 1] -> latents [B, 4, h, w] (float32), differentiable in rgb."""
        if self.latent_mode == "rgb":
            small = _resize(rgb, self.latent_shape[1])
            weight, bias = self.rgb_to_latent[:, :3], self.rgb_to_latent[:, 3, None, None]
            return torch.einsum("ck,bkhw->bchw", weight, small) + bias
        image = (_resize(rgb, self.render_resolution) * 2.0 - 1.0).to(self.dtype)
        if self.vae_channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        latents = self.vae_graphs(image)
        return latents.float() * self.scaling_factor  # a copy: the graph's output buffer is reused next call

    def _vae_mean(self, image: torch.Tensor) -> torch.Tensor:
        # The posterior mean, not a sample: the VAE's posterior std is tiny and a sample adds only jitter.
        return self.vae.encode(image).latent_dist.mean

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode((x / self.scaling_factor).to(self.device, self.dtype)).sample
        return ((image.float() + 1.0) * 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def _fit_rgb_to_latent(self) -> torch.Tensor:
        """A [4, 4] matrix: latent = A[:, :3] rgb + A[:, 3], least squares over 27 flat colours. The centre of
        each colour's latent image is used, away from the encoder's zero padding at the border."""
        levels = torch.tensor([0.0, 0.5, 1.0])
        colors = torch.cartesian_prod(levels, levels, levels)                      # [27, 3]
        size = 8 * self.vae_scale
        images = colors[:, :, None, None].expand(-1, -1, size, size) * 2.0 - 1.0
        latents = self.vae.encode(images.to(self.device, self.dtype)).latent_dist.mean.float() * self.scaling_factor
        centre = latents[:, :, 2:-2, 2:-2].mean(dim=(2, 3)).cpu()                  # [27, 4]
        design = torch.cat([colors, torch.ones(len(colors), 1)], dim=1)            # [27, 4]
        solution = torch.linalg.lstsq(design, centre).solution                     # [4 (rgb1), 4 (latent)]
        return solution.T.contiguous().to(self.device)

    # ---- noise prediction ----------------------------------------------------------------------

    @torch.no_grad()
    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, conditions: Sequence[str],
                      view: View) -> torch.Tensor:
        batch = z_t.shape[0]
        t = torch.as_tensor(t, device=self.device).long().reshape(-1).expand(batch)
        embeddings = [self._condition_embeddings(c, view, batch) for c in conditions]
        names = list(conditions)
        perp_neg = self.perp_neg and self.view_dependent and view is not None and TEXT in names
        if perp_neg:
            positive, negatives, weights = self._perp_neg_embeddings(view)
            embeddings[names.index(TEXT)] = positive
            if UNCOND not in names:
                names.append(UNCOND)
                embeddings.append(self._condition_embeddings(UNCOND, view, batch))
            embeddings += list(negatives)
        k = len(embeddings)

        # ONE UNet call for every condition (and Perp-Neg's extra ones).
        z = z_t.detach().to(self.device, torch.float32)
        latents = z.to(self.dtype).repeat(k, 1, 1, 1)
        if self.device.type == "cuda":
            latents = latents.contiguous(memory_format=torch.channels_last)
        out = self.unet_graphs(latents, t.repeat(k), torch.cat(embeddings))
        self.unet_calls += 1
        out = out.float().reshape(k, *z_t.shape)
        if self.prediction_type == "v_prediction":  # v = a_t eps - s_t x0  =>  eps = a_t v + s_t z_t
            abar = self._abar[t].reshape(-1, 1, 1, 1)
            out = abar.sqrt() * out + (1.0 - abar).sqrt() * z[None]

        if perp_neg:
            i_text, i_uncond = names.index(TEXT), names.index(UNCOND)
            out[i_text] = perp_neg_text(out[i_uncond], out[i_text], out[len(names):], weights)
        return out[:len(conditions)].to(z_t)  # on the caller's device and dtype

    def _unet_eps(self, latents: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, t, encoder_hidden_states=embeddings).sample

    def describe(self) -> dict:
        attention = sorted({type(p).__name__ for p in self.unet.attn_processors.values()})
        return {"name": self.name, "model": self.model_id, "weights_sha256": self.weights_sha256,
                "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
                "latent_mode": self.latent_mode, "latent_shape": list(self.latent_shape),
                "render_resolution": self.render_resolution, "prediction_type": self.prediction_type,
                "perp_neg": self.perp_neg, "attention": attention, "cpu_offload": self.cpu_offload,
                "cuda_graphs": self.unet_graphs.enabled, "vae_channels_last": self.vae_channels_last}


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def view_indices(elevation: torch.Tensor, azimuth: torch.Tensor) -> torch.Tensor:
    """cameras.view_suffix as tensor maths: the VIEW_SUFFIXES index [B] of each camera, computed where the
    angles are (reading them on the host would wait for the GPU). tests check the two agree."""
    azimuth = ((azimuth + 180.0) % 360.0 - 180.0).abs()
    index = torch.full_like(azimuth, VIEW_SUFFIXES.index("side view"), dtype=torch.long)
    index = torch.where(azimuth < 45.0, VIEW_SUFFIXES.index("front view"), index)
    index = torch.where(azimuth > 135.0, VIEW_SUFFIXES.index("back view"), index)
    return torch.where(elevation > 60.0, VIEW_SUFFIXES.index("overhead view"), index)


def _check_options(**options) -> dict:
    """Options checked against shared/schema.py SD_OPTIONS, or UserError naming the bad one."""
    try:
        return check_prior_options(options)
    except SettingError as error:
        raise UserError(error.message, error.field) from None


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move a module, casting only when its dtype differs (diffusers warns on every dtype cast)."""
    module = module.to(device)
    return module if module.dtype == dtype else module.to(dtype)


def _resize(rgb: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(rgb.shape[-2:]) == (size, size):
        return rgb
    # antialias only matters when shrinking (512 -> 64 in "rgb" mode); it is a no-op when enlarging
    return F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=rgb.shape[-1] > size)
