"""Checkpoints: everything needed to resume a run exactly, written atomically, read without pickle.

`torch.load(weights_only=True)` only accepts tensors and plain containers, so a checkpoint from
elsewhere cannot run code on load.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shared.results import CHECKPOINT

from .errors import UserError
from .fileio import write_with

FORMAT = "distill3d-checkpoint-1"


def save_checkpoint(path: Path, **state: Any) -> Path:
    # atomic: a crash mid-write leaves the previous checkpoint intact
    return write_with(path, lambda temp: torch.save({"format": FORMAT, **state}, temp))


IF_CORRUPT = "start the run again from the beginning (delete the file, or resubmit the job)"


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu",
                    if_corrupt: str = IF_CORRUPT) -> dict[str, Any]:
    """The saved state. `if_corrupt` is the advice in the error for a corrupt file. The default is
    one a command-line user and a server user can both follow; a caller that knows its user better
    passes its own (e.g. the CLI's "start the run again without --resume")."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: give the checkpoint.pt of a run (or its folder)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated file, not a torch file, or an unsafe pickle
        raise UserError(f"checkpoint {path} is corrupt or not a Distill3D checkpoint ({type(error).__name__}): "
                        f"{if_corrupt}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a Distill3D checkpoint (format {FORMAT} expected): "
                        "give the checkpoint.pt written by `python -m backend generate`")
    return state


def load_model(path: Path, device: str | torch.device = "cpu"):
    """The trained NeRF and its config from a checkpoint (for re-export and previews)."""
    from .config import GenerateConfig
    from .nerf import NeRFModel

    state = load_checkpoint(path, map_location=device)
    config = GenerateConfig.from_dict(state["config"]).resolved()
    model = NeRFModel(nerf_settings(config), device=device).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, config


def nerf_settings(config):
    """The NeRF settings a GenerateConfig asks for (one place, used by training and re-export)."""
    from .nerf import NeRFSettings

    return NeRFSettings(hash_levels=config.hash_levels, log2_table=config.hash_log2_table,
                        occupancy_resolution=config.occupancy_resolution,
                        max_samples_per_ray=config.max_samples_per_ray, levels_start=config.hash_levels_start)
