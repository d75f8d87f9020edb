"""The CUDA-graph cache (backend/priors/cuda_graphs.py) on the CPU: keying, copy-in/copy-out, fallbacks.

The CPU has no graphs, so these tests use a test double for the capture alone: `rerun_capture` keeps
the same static input and output buffers a CUDA capture keeps, and its "replay" re-runs the function
on them. Everything around it (signatures, copies, clones, fallbacks) is the real code; the real
capture and replay are checked against eager in tests/test_gpu.py."""
import logging

import pytest
import torch

from backend.methods import make_method
from backend.priors import load_prior
from backend.priors.cuda_graphs import Captured, GraphedFunction, signature
from backend.priors.stable_diffusion import StableDiffusionPrior

from tests.helpers import PROMPT, random_view

pytestmark = pytest.mark.usefixtures("one_thread")


def rerun_capture(fn, args, pool=None):
    static = tuple(a.detach().clone() for a in args)
    outputs = fn(*static)

    def replay():
        fresh = fn(*static)
        for out, new in zip(_tuple(outputs), _tuple(fresh)):
            out.copy_(new)

    return Captured(static, outputs, replay)


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


class Recorder:
    """fn(a, b) = a * 2 + b, counting calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, a, b):
        self.calls += 1
        return a * 2 + b


def test_signature_tells_shapes_dtypes_and_layouts_apart():
    a = torch.zeros(2, 4, 8, 8)
    assert signature((a,)) == signature((torch.ones(2, 4, 8, 8),))
    assert signature((a,)) != signature((torch.zeros(3, 4, 8, 8),))
    assert signature((a,)) != signature((a.double(),))
    assert signature((a,)) != signature((a.contiguous(memory_format=torch.channels_last),))


def test_one_capture_per_signature_and_replays_give_fresh_results():
    fn = Recorder()
    captures = []
    graphed = GraphedFunction(fn, device_type="cpu",
                              capture=lambda f, args, pool: captures.append(args[0].shape) or rerun_capture(f, args))
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    first = graphed(a, b)
    torch.testing.assert_close(first, a * 2 + b)
    second = graphed(b, a)                                    # same signature: replayed with the new inputs
    torch.testing.assert_close(second, b * 2 + a)
    torch.testing.assert_close(first, a * 2 + b)              # the first result was cloned out, not overwritten
    graphed(torch.randn(5, 3), torch.randn(5, 3))             # a new shape: a second capture
    assert captures == [(2, 3), (5, 3)] and len(graphed.graphs) == 2
    assert graphed.calls == 3 and graphed.replays == 3


def test_disabled_or_other_device_runs_eagerly():
    for graphed in (GraphedFunction(Recorder(), enabled=False, device_type="cpu", capture=rerun_capture),
                    GraphedFunction(Recorder(), capture=rerun_capture)):   # device_type cuda, CPU inputs
        a = torch.randn(3)
        torch.testing.assert_close(graphed(a, a), 3 * a)
        assert graphed.graphs == {} and graphed.replays == 0 and graphed.fn.calls == 1


def test_grad_mode_picks_the_kind():
    plain = GraphedFunction(Recorder(), device_type="cpu", capture=rerun_capture)
    autograd = GraphedFunction(Recorder(), device_type="cpu", capture=rerun_capture, autograd=True)
    a = torch.randn(3, requires_grad=True)
    assert not plain.usable((a, a)) and autograd.usable((a, a))  # a backward will follow: no plain replay
    with torch.no_grad():
        assert plain.usable((a, a)) and not autograd.usable((a, a))
    assert plain.usable((a.detach(), a.detach())) and not autograd.usable((a.detach(), a.detach()))


def test_a_failed_capture_warns_once_and_stays_eager(caplog):
    attempts = []

    def broken(fn, args, pool):
        attempts.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    fn = Recorder()
    graphed = GraphedFunction(fn, device_type="cpu", capture=broken, name="the test function")
    a = torch.randn(4)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            torch.testing.assert_close(graphed(a, a), 3 * a)
    assert attempts == [1] and fn.calls == 3 and graphed.replays == 0
    assert caplog.text.count("could not capture the test function") == 1


def test_the_prior_runs_eagerly_on_the_cpu_and_graphs_can_be_turned_off(sd_folder):  # noqa: F811
    prior = load_prior(str(sd_folder), offline=True, options={"cuda_graphs": False})
    assert not prior.unet_graphs.enabled and prior.describe()["cuda_graphs"] is False
    default = StableDiffusionPrior.load(sd_folder, offline=True)
    assert not default.unet_graphs.enabled  # the CPU has no graphs: eager, whatever the setting


@pytest.mark.parametrize("method", ["sds", "sdi"])
def test_replayed_predictions_match_eager_and_sdi_needs_one_graph_for_every_grid_length(sd_folder, method):  # noqa: F811
    """SDI's grid length changes how many UNet calls a step makes, not their shape: one graph serves
    every inversion step and the final prediction, at every t."""
    eager = StableDiffusionPrior.load(sd_folder, offline=True)
    graphed = StableDiffusionPrior.load(sd_folder, offline=True)
    graphed.unet_graphs = GraphedFunction(graphed._unet_eps, device_type="cpu", capture=rerun_capture)
    view = random_view(1)
    x = torch.randn(1, 4, 8, 8)
    max_steps = 10
    grid_lengths = set()
    for prior in (eager, graphed):
        prior.set_prompts(PROMPT)
    methods = [make_method(method, max_steps=max_steps, seed=3) for _ in range(2)]
    for m, prior in zip(methods, (eager, graphed)):
        m.setup(prior)
    for step in range(max_steps):
        if method == "sdi":
            grid_lengths.add(len(methods[0].inversion_grid(methods[0].timestep(step), 0)))
        a, b = (m.gradient(x, step, view) for m in methods)
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b.extras["z_t"], a.extras["z_t"], atol=1e-5, rtol=1e-4)
    assert len(graphed.unet_graphs.graphs) == 1
    assert graphed.unet_graphs.replays == graphed.unet_calls == eager.unet_calls
    if method == "sdi":
        assert len(grid_lengths) >= 5  # t from 980 down to 250 crosses many grid lengths
