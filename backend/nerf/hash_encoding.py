"""Which hash encoding a field gets (encoding.py, compiled.py): one choice, made here."""
from __future__ import annotations

import logging

import torch
from torch import nn

from .compiled import CompiledHashGrid, compiled_usable
from .encoding import TcnnHashGrid, TorchHashGrid

log = logging.getLogger(__name__)

_warned_no_tcnn = False


def tcnn_usable(device: torch.device | str | None) -> bool:
    """Whether to use tiny-cuda-nn: on CUDA when it imports (warning once when it does not)."""
    global _warned_no_tcnn
    if device is None or torch.device(device).type != "cuda":
        return False
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        if not _warned_no_tcnn:
            log.warning("tinycudann is not installed: using the slower PyTorch hash encoding on CUDA. "
                        "Install tiny-cuda-nn's PyTorch bindings for the fused kernel.")
            _warned_no_tcnn = True
        return False
    return True


IMPLEMENTATIONS = ("auto", "torch", "compiled", "tcnn")


def make_encoding(settings, device: torch.device | str | None = None, implementation: str = "auto") -> nn.Module:
    """The hash encoding on `device`. "auto": tiny-cuda-nn's on CUDA when it imports, else the compiled
    one on CUDA (compiled.py), else the PyTorch one; or one of them by name."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown hash encoding {implementation!r}: use one of {', '.join(IMPLEMENTATIONS)}")
    if implementation == "auto":
        implementation = ("tcnn" if tcnn_usable(device) else "compiled" if compiled_usable(device) else "torch")
    grid = {"tcnn": TcnnHashGrid, "compiled": CompiledHashGrid, "torch": TorchHashGrid}[implementation](settings)
    return grid.to(device if device is not None else "cpu")
