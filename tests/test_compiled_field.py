"""The compiled field (backend/nerf/compiled.py) against the PyTorch reference encoding and heads, whose
own correctness tests/test_nerf.py checks against a slow per-point loop. The same source runs eagerly
(compile=False, fast here) and compiled (torch.compile's CPU backend, one slow test; CUDA in test_gpu.py)."""
import pytest
import torch

from backend.nerf import NeRFSettings
from backend.nerf.compiled import CompiledHashGrid, compiled_usable
from backend.nerf.encoding import TorchHashGrid
from backend.nerf.hash_encoding import make_encoding
from backend.nerf.field import RadianceField
from backend.nerf.heads import FusedHeads

from tests.helpers import SMALL


def twin_grids(compile: bool, dtype=torch.float64, active=None):
    torch.manual_seed(0)
    reference = TorchHashGrid(SMALL).to(dtype)
    for table in reference.tables:           # well away from the tiny initial values, so errors show
        table.data.uniform_(-1.0, 1.0)
    grid = CompiledHashGrid(SMALL, compile=compile).to(dtype)
    grid.load_state_dict(reference.state_dict())
    if active is not None:
        reference.set_active_levels(active)
        grid.set_active_levels(active)
    return reference, grid


def compare(reference, grid, points, atol):
    """Features, the Jacobian's pullback and the table gradients of both, through one shared loss."""
    results = []
    g = torch.randn(len(points), reference.out_dim, dtype=points.dtype)
    for encoding in (reference, grid):
        features, pullback = encoding(points, with_jacobian=True)
        normal_like = pullback(g)
        ((features * g).sum() + (normal_like ** 2).sum()).backward()
        results.append((features.detach(), normal_like.detach(), [t.grad for t in encoding.tables]))
    (fa, na, ga), (fb, nb, gb) = results
    torch.testing.assert_close(fb, fa, atol=atol, rtol=0)
    torch.testing.assert_close(nb, na, atol=atol * 100, rtol=1e-4)
    for a, b in zip(ga, gb):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, atol=atol * 100, rtol=1e-4)


@pytest.mark.parametrize("active", [None, 3])
def test_eager_compiled_source_matches_the_reference_encoding(active):
    reference, grid = twin_grids(compile=False, active=active)
    points = torch.rand(3000, 3, dtype=torch.float64) * 2 - 1
    points[:4] = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    compare(reference, grid, points, atol=1e-12)
    features = grid(points)
    assert torch.count_nonzero(features[:, 2 * (active or 6):]) == 0   # inactive levels give zeros
    assert torch.count_nonzero(features[:, :2 * (active or 6)]) > 0


def test_compiled_heads_match_fused_heads():
    from backend.nerf.compiled import heads

    torch.manual_seed(1)
    x = torch.randn(5000, 12, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(2 * 8, 12, dtype=torch.float64, requires_grad=True),
               torch.randn(1, 8, dtype=torch.float64, requires_grad=True),
               torch.randn(3, 8, dtype=torch.float64, requires_grad=True)]
    grads = []
    for fn in (FusedHeads.apply, heads):
        outputs = fn(x, *weights)
        sum(o.pow(2).sum() for o in outputs).backward()
        grads.append([outputs, [t.grad.clone() for t in (x, *weights)]])
        for t in (x, *weights):
            t.grad = None
    for a, b in zip(grads[0][0] + tuple(grads[0][1]), grads[1][0] + tuple(grads[1][1])):
        torch.testing.assert_close(b, a)


def test_field_with_the_compiled_source_gives_the_same_samples():
    torch.manual_seed(2)
    settings = NeRFSettings(hash_levels=6, log2_table=12, base_resolution=4, per_level_scale=2.0, levels_start=6)
    reference = RadianceField(settings)
    field = RadianceField(settings)
    field.encoding = CompiledHashGrid(settings, compile=False)
    for table in reference.encoding.tables:
        table.data.uniform_(-0.5, 0.5)
    field.load_state_dict(reference.state_dict())
    points = torch.rand(2000, 3) * 2 - 1
    a, b = reference(points), field(points)
    for name in ("density", "albedo", "normal"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-5, rtol=1e-4)


def test_active_levels_follow_set_active_levels_and_checkpoints():
    reference, grid = twin_grids(compile=False)
    points = torch.rand(100, 3, dtype=torch.float64) * 2 - 1
    assert torch.count_nonzero(grid(points)[:, 2 * 2:]) > 0
    grid.set_active_levels(2)
    assert torch.count_nonzero(grid(points)[:, 2 * 2:]) == 0
    grid.load_state_dict(reference.state_dict())            # a checkpoint with all 6 levels on
    assert torch.count_nonzero(grid(points)[:, 2 * 5:]) > 0


def test_cpu_keeps_the_reference_encoding(monkeypatch):
    assert not compiled_usable("cpu") and isinstance(make_encoding(SMALL, "cpu"), TorchHashGrid)
    assert not isinstance(make_encoding(SMALL, "cpu"), CompiledHashGrid)
    monkeypatch.setenv("DISTILL3D_COMPILE", "0")
    assert not compiled_usable("cuda")


@pytest.mark.slow
def test_torch_compile_on_the_cpu_matches_the_reference():
    """torch.compile's CPU backend (C++ from Inductor) compiles the same source: dynamic N, both level kinds."""
    reference, grid = twin_grids(compile=True, dtype=torch.float32)
    for n in (1000, 1700):  # a second sample count must not need another graph to be right
        for t in (*reference.tables, *grid.tables):
            t.grad = None
        compare(reference, grid, torch.rand(n, 3) * 2 - 1, atol=1e-5)
    assert not grid._encode.failed  # compiled, not the eager fallback
