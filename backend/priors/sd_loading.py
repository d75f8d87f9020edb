"""Finding and loading a Stable Diffusion 1.x/2.x checkpoint: a Hugging Face Hub id (downloaded to the
usual HF cache on first use) or a local diffusers folder, with errors that say how to get the weights.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from pathlib import Path

import torch

from ..errors import UserError
from .base import NoiseSchedule

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
# A Hub repo id: "name" or "owner/name" (huggingface_hub's validate_repo_id, simplified).
_HUB_ID = re.compile(r"^(?:[\w][\w.-]*/)?[\w][\w.-]*$")
_HASH_SAMPLE_BYTES = 1 << 20  # bytes of tensor data hashed per weight file, beside the header


def fetch_command(model_id: str) -> str:
    """The command that downloads only what this backend loads (about 2.6 GB for SD 2.1-base)."""
    return (f'hf download {model_id} --include "*.json" "*.txt" "unet/diffusion_pytorch_model.safetensors" '
            f'"vae/diffusion_pytorch_model.safetensors" "text_encoder/model.safetensors" --local-dir sd-model')


def _how_to_fetch(model_id: str) -> str:
    return (f"on a machine with internet run `{fetch_command(model_id)}` (huggingface_hub < 0.34: "
            f"`huggingface-cli download` with the same arguments), copy the sd-model folder here and pass "
            f"its path as the prior (--prior /path/to/sd-model)")


def resolve_folder(name_or_path: str, offline: bool) -> Path:
    """The local diffusers folder for a folder path or a Hub id (downloading it unless offline)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        raise UserError(f"{path} is a single file, but a diffusers folder is needed (model_index.json, unet/, "
                        "vae/, ...): convert it with diffusers' StableDiffusionPipeline.from_single_file(path)"
                        ".save_pretrained(folder), or give a Hub id such as " + DEFAULT_MODEL)
    if path.is_dir():
        check_folder(path)
        return path
    if not _HUB_ID.match(name_or_path) or name_or_path.startswith((".", "~")) or "--" in name_or_path:
        raise UserError(f"the model folder {path} does not exist: give an existing diffusers folder or a Hugging "
                        f"Face model id such as {DEFAULT_MODEL}")
    return check_folder(_download(name_or_path, offline))


def _download(model_id: str, offline: bool) -> Path:
    """diffusers' own download (progress bar, HF cache), skipping the parts never used here."""
    from diffusers import StableDiffusionPipeline

    try:
        return Path(StableDiffusionPipeline.download(
            model_id, local_files_only=offline, safety_checker=None, feature_extractor=None, image_encoder=None))
    except Exception as error:  # noqa: BLE001 - hub, network and cache errors have many types
        if offline:
            raise UserError(f"the model {model_id} is not in the Hugging Face cache and offline mode is on (if "
                            f"you meant a local folder, it does not exist): {_how_to_fetch(model_id)}") from error
        raise UserError(f"could not download {model_id} from the Hugging Face Hub ({_first_line(error)}): check "
                        f"the id and your connection, or {_how_to_fetch(model_id)}") from error


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def check_folder(folder: Path) -> Path:
    """Raise UserError unless `folder` looks like a diffusers SD 1.x/2.x pipeline."""
    index_file = folder / "model_index.json"
    missing = [name for name in COMPONENTS if not (folder / name).is_dir()]
    if not index_file.is_file() or missing:
        what = "model_index.json" if not index_file.is_file() else ", ".join(f"{m}/" for m in missing)
        raise UserError(f"{folder} is not a diffusers Stable Diffusion folder (no {what}): point the prior at "
                        f"a full download, e.g. {_how_to_fetch(DEFAULT_MODEL)}")
    index = json.loads(index_file.read_text())
    if "text_encoder_2" in index or "transformer" in index:
        raise UserError(f"{folder} holds a {index.get('_class_name', 'non-SD 1.x/2.x')} model; only Stable "
                        f"Diffusion 1.x/2.x checkpoints work here, e.g. {DEFAULT_MODEL}")
    return folder


def load_components(folder: Path, dtype: torch.dtype) -> dict:
    """unet, vae, text_encoder, tokenizer and scheduler through StableDiffusionPipeline.from_pretrained."""
    from diffusers import StableDiffusionPipeline

    try:
        # newer diffusers rename torch_dtype to dtype and warn; older ones know only torch_dtype
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = StableDiffusionPipeline.from_pretrained(
                folder, torch_dtype=dtype, local_files_only=True, safety_checker=None, feature_extractor=None,
                image_encoder=None, requires_safety_checker=False)
    except Exception as error:  # noqa: BLE001 - a broken folder fails in many ways inside diffusers
        raise UserError(f"could not load Stable Diffusion from {folder} ({_first_line(error)}): the folder is "
                        f"incomplete or damaged; download it again, e.g. {_how_to_fetch(DEFAULT_MODEL)}") from error
    return dict(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                scheduler=pipe.scheduler)


def model_schedule(scheduler_config) -> NoiseSchedule:
    """The model's training noise schedule as a NoiseSchedule. SD 1.x/2.x all use the standard one
    (scaled_linear 0.00085 .. 0.012, 1000 steps); another one is used as it is, with a warning."""
    from diffusers import DDPMScheduler

    schedule = NoiseSchedule()
    theirs = DDPMScheduler.from_config(scheduler_config).alphas_cumprod.double()
    if theirs.shape != schedule.alphas_cumprod.shape:
        raise UserError(f"this model was trained with {len(theirs)} noise steps, but the methods here are written "
                        f"for Stable Diffusion's {len(schedule.alphas_cumprod)}: use an SD 1.x/2.x model")
    difference = (theirs - schedule.alphas_cumprod).abs().max().item()
    if difference > 1e-5:  # float32 rounding in diffusers stays far below this
        logger.warning("this model's noise schedule differs from Stable Diffusion's (max |d abar| = %.3g); using "
                       "the model's own, but the methods' defaults were tuned for SD's", difference)
        schedule.alphas_cumprod = theirs
    return schedule


def weights_hash(folder: Path) -> str:
    """A cheap fingerprint of the weights: sha256 over model_index.json, each component's config, and per
    weight file its name, size, safetensors header (names, shapes, dtypes) and first 1 MiB of tensor data.
    Different fine-tunes differ in that data; reading it costs milliseconds instead of minutes."""
    digest = hashlib.sha256()
    digest.update((folder / "model_index.json").read_bytes())
    for component in WEIGHT_COMPONENTS:
        config = folder / component / "config.json"
        if config.is_file():
            digest.update(config.read_bytes())
        for weights in _weight_files(folder / component):
            digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
            with open(weights, "rb") as f:
                if weights.suffix == ".safetensors":
                    header_size = int.from_bytes(f.read(8), "little")
                    digest.update(f.read(header_size))
                digest.update(f.read(_HASH_SAMPLE_BYTES))
    return digest.hexdigest()


def _weight_files(component: Path) -> list[Path]:
    """The weight files diffusers/transformers load by default: safetensors over pickles, no variants."""
    for suffix in (".safetensors", ".bin"):
        files = sorted(component.glob(f"*{suffix}"))
        plain = [f for f in files if len(f.name.split(".")) == 2]  # drops model.fp16.safetensors and the like
        if plain or files:
            return plain or files
    return []
