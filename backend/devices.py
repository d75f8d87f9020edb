"""Device names: one place turns "auto", "cpu", "cuda" or "cuda:N" into a device that exists."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch


def canonical_device(name: str, auto: str | None = None) -> str:
    """The one spelling of a device, so one device has one name (and one server queue):
    "auto" -> `auto` if given, else the first GPU when torch sees one, else "cpu"; "cuda" -> "cuda:0"."""
    if name == "auto":
        if auto is None:
            import torch  # lazily: the server process answers commands without loading torch

            auto = "cuda:0" if torch.cuda.is_available() else "cpu"
        name = auto
    return "cuda:0" if name == "cuda" else name


def cuda_device_problem(name: str) -> str | None:
    """Why `name` cannot be used here (a sentence saying what to do instead), or None if it can."""
    if not name.startswith("cuda"):
        return None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(name.partition(":")[2] or 0)
    if index < count:
        return None
    if count == 0:
        return (f"device {name!r} asked for, but PyTorch sees no CUDA GPU here: use device auto or cpu "
                "(or install a CUDA build of PyTorch)")
    return f"device {name!r} asked for, but PyTorch sees {count} CUDA GPU(s): use auto, cpu or cuda:0 to cuda:{count - 1}"


def resolve_device(name: "str | torch.device") -> "torch.device":
    """A torch.device that exists here; UserError naming what to use instead."""
    import torch

    if isinstance(name, torch.device):
        return name
    name = canonical_device(name)
    problem = cuda_device_problem(name)
    if problem:
        raise UserError(problem)
    return torch.device(name)
