"""What a running job tells the outside world: the CLI prints these, the server publishes them.

A job gets one callback, `on_event(event)`, and one question, `should_stop()`, checked every step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np


@dataclass
class Progress:
    step: int          # steps done so far (1-based after the first step)
    total: int
    t: int             # the diffusion timestep of the last step
    loss: float
    it_per_s: float
    eta_s: float


@dataclass
class Preview:
    step: int
    image: np.ndarray  # [H, W, 3] uint8 RGB


@dataclass
class CoarseMesh:
    step: int
    vertices: np.ndarray  # [V, 3] float32, glTF frame (+Y up, front +Z; docs/frames.md)
    faces: np.ndarray     # [F, 3] int32
    colors: np.ndarray    # [V, 3] uint8


@dataclass
class Log:
    level: str         # "info" | "warning" | "error"
    message: str


@dataclass
class Finished:
    outputs: dict[str, str] = field(default_factory=dict)  # name -> file path


Event = Union[Progress, Preview, CoarseMesh, Log, Finished]
EventCallback = Callable[[Event], None]
StopCheck = Callable[[], bool]


def ignore_event(event: Event) -> None:
    """The default callback."""


def never_stop() -> bool:
    return False
