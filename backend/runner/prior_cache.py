"""Loaded priors, kept between jobs so the second job on a device does not reload the model
(threestudio reloads it for every run; users notice). Least recently used priors are dropped
beyond `capacity`."""
from __future__ import annotations

import gc
import sys
import threading
from collections import OrderedDict
from typing import Any, Callable

Loader = Callable[..., Any]  # (name, device, resolution=..., offline=..., options=...) -> Prior


def _load_prior(name: str, device: str, resolution: int, offline: bool, options: dict | None = None) -> Any:
    from ..priors import load_prior

    return load_prior(name, device, resolution=resolution, offline=offline, options=options)


def free_device_memory() -> None:
    """Give memory of dropped tensors back: Python's garbage, then the CUDA cache."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class PriorCache:
    def __init__(self, loader: Loader | None = None, capacity: int = 2):
        self._loader = loader or _load_prior
        self._capacity = max(1, capacity)
        self._priors: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, device: str, resolution: int, offline: bool = False, options: dict | None = None) -> Any:
        key = (name, device, resolution, tuple(sorted((options or {}).items())))
        with self._lock:  # one load at a time: two models loading at once could exhaust memory
            if key in self._priors:
                self._priors.move_to_end(key)
                return self._priors[key]
            while len(self._priors) >= self._capacity:
                self._priors.popitem(last=False)
                free_device_memory()
            prior = self._loader(name, device, resolution=resolution, offline=offline, options=options or None)
            self._priors[key] = prior
            return prior

    def loaded(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"name": name, "device": device, "resolution": resolution, "options": dict(options)}
                    for name, device, resolution, options in self._priors]

    def clear(self) -> None:
        with self._lock:
            self._priors.clear()
        free_device_memory()
