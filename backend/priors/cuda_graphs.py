"""Replaying a function from CUDA graphs, one graph per input signature, with eager as the fallback.

Stable Diffusion's UNet at 64x64 latents is launch-bound: about a thousand small kernels whose launch
costs more host time than the GPU spends on them. A CUDA graph records the kernels of one call once
and replays them with a single launch. A graph is fixed to its input shapes, dtypes and devices, so
`GraphedFunction` keeps one graph per signature (for a method and batch size that is one graph:
SDS asks for batch 2, NFSD for 3, and SDI's inversion calls all have SDS's shape, whatever its grid
length). Inputs are copied into the graph's static buffers, the graph replays, and the outputs are
cloned out (the next replay overwrites them).

Two kinds:
- `GraphedFunction(fn)`: no autograd (the UNet's noise predictions run under torch.no_grad).
- `GraphedFunction(fn, autograd=True)`: forward and backward both captured through
  `torch.cuda.make_graphed_callables` (the VAE encoder, whose input gradient reaches the render).
  Its outputs and input gradients live in the graph's buffers until the next call: use each
  output before calling again (the training step encodes once, then runs backward).

Eager runs instead when graphs are off, for inputs that are not all on CUDA, when grad mode differs
from what the kind needs, and for a signature whose capture failed (logged once). Capture with an
attention-slicing or CPU-offloaded model is refused by the caller (stable_diffusion.py).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

logger = logging.getLogger(__name__)

WARMUP_CALLS = 3  # eager calls on a side stream before capture: cuBLAS/cuDNN pick their kernels and workspaces


def signature(args: tuple[torch.Tensor, ...]) -> tuple:
    """What a graph is fixed to: each input's shape, dtype, device and memory layout (strides)."""
    return tuple((tuple(a.shape), a.dtype, a.device, a.stride()) for a in args)


class Captured:
    """One captured call: static inputs, static outputs and the replay that refreshes the outputs."""

    def __init__(self, static_inputs: tuple[torch.Tensor, ...], static_outputs, replay: Callable[[], None]):
        self.static_inputs, self.static_outputs, self.replay = static_inputs, static_outputs, replay

    def __call__(self, args: tuple[torch.Tensor, ...]):
        for static, arg in zip(self.static_inputs, args):
            static.copy_(arg)
        self.replay()
        return _clone(self.static_outputs)


def capture_cuda(fn: Callable, args: tuple[torch.Tensor, ...], pool=None) -> Captured:
    """Record fn(*args) into a CUDA graph (PyTorch's recipe: warm up on a side stream, then capture)."""
    static = tuple(a.detach().clone() for a in args)  # clone keeps the layout (channels-last stays so)
    stream = torch.cuda.Stream(device=static[0].device)
    stream.wait_stream(torch.cuda.current_stream(static[0].device))
    with torch.cuda.stream(stream):
        for _ in range(WARMUP_CALLS):
            fn(*static)
    torch.cuda.current_stream(static[0].device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = fn(*static)
    return Captured(static, outputs, graph.replay)


def capture_cuda_autograd(fn: Callable, args: tuple[torch.Tensor, ...], pool=None) -> Callable:
    """Forward and backward graphs of fn through torch.cuda.make_graphed_callables (its own memory pool).
    The returned callable is differentiable in the inputs that require grad."""
    static = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
    graphed = torch.cuda.make_graphed_callables(fn, static, num_warmup_iters=WARMUP_CALLS)
    return lambda call_args: graphed(*call_args)


class GraphedFunction:
    """fn(*tensors) -> tensor(s), replayed from one CUDA graph per input signature.

    `capture(fn, args, pool)` records a call and returns a callable taking the argument tuple; the
    default records a CUDA graph. `device_type` is the device whose inputs are captured (tests use
    "cpu" with a capture that re-runs fn in place of a replay). Calls are counted per signature in
    `calls` and `replays` (what bench_sd reports)."""

    def __init__(self, fn: Callable, *, enabled: bool = True, autograd: bool = False, name: str = "function",
                 capture: Callable | None = None, device_type: str = "cuda"):
        self.fn, self.enabled, self.autograd, self.name, self.device_type = fn, enabled, autograd, name, device_type
        self.capture = capture or (capture_cuda_autograd if autograd else capture_cuda)
        self.graphs: dict[tuple, Callable | None] = {}  # signature -> captured call, or None: eager (capture failed)
        self.pool = None
        self.calls = 0
        self.replays = 0

    def usable(self, args: tuple[torch.Tensor, ...]) -> bool:
        """Whether this call can replay a graph: graphs on, every input a tensor on the graph device, and
        grad mode as this kind needs it (no autograd graph for a plain replay; an input needing grad for
        an autograd one, whose graphs are pointless without a backward)."""
        if not self.enabled or not args or not all(isinstance(a, torch.Tensor) for a in args):
            return False
        if any(a.device.type != self.device_type for a in args):
            return False
        if self.autograd:
            return torch.is_grad_enabled() and any(a.requires_grad for a in args)
        return not (torch.is_grad_enabled() and any(a.requires_grad for a in args))

    def __call__(self, *args: torch.Tensor):
        self.calls += 1
        if not self.usable(args):
            return self.fn(*args)
        key = signature(args)
        if key not in self.graphs:
            self.graphs[key] = self._capture(args)
        captured = self.graphs[key]
        if captured is None:
            return self.fn(*args)
        self.replays += 1
        return captured(args)

    def _capture(self, args: tuple[torch.Tensor, ...]) -> Callable | None:
        if self.pool is None and self.device_type == "cuda" and not self.autograd:
            self.pool = torch.cuda.graph_pool_handle()  # one pool for all of this function's graphs: replays never overlap
        try:
            captured = self.capture(self.fn, args, self.pool)
        except Exception as error:  # noqa: BLE001 - capture fails in many ways (a sync, an unsupported op)
            logger.warning("could not capture %s as a CUDA graph for inputs %s (%s: %s); running it eagerly",
                           self.name, [tuple(a.shape) for a in args], type(error).__name__, str(error)[:200])
            if self.device_type == "cuda":
                torch.cuda.synchronize()
            return None
        logger.info("captured %s as a CUDA graph for inputs %s", self.name, [tuple(a.shape) for a in args])
        return captured

    def reset(self) -> None:
        """Drop every graph (and its memory), e.g. after the wrapped module's weights were replaced."""
        self.graphs.clear()
        self.pool = None


def _clone(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs.clone()
    return type(outputs)(_clone(o) for o in outputs)
