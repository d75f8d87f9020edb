import logging
import math
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import backend.nerf.encoding as encoding
import backend.nerf.field as field_module
import backend.nerf.heads as heads
from backend.cameras import orbit_cameras
from backend.errors import UserError
from backend.losses import orientation_loss
from backend.nerf import NeRFModel, NeRFSettings
import backend.nerf.hash_encoding as hash_encoding
from backend.nerf.encoding import PRIMES, TorchHashGrid
from backend.nerf.hash_encoding import make_encoding
from backend.nerf.heads import FusedHeads
from tests.helpers import SMALL
from backend.shading import AMBIENT

# Small grid: levels 0-1 are dense ((N+1)^3 <= 2^12), levels 2-5 are hashed.


def slow_encoding(grid: TorchHashGrid, point: torch.Tensor) -> torch.Tensor:
    """instant-ngp's encoding of one point, corner by corner, with Python integers."""
    out = []
    table_size = 2 ** SMALL.log2_table
    for level, table in zip(grid.levels, grid.tables):
        n = level.resolution
        pos = [(float(c) + 1.0) / 2.0 * n for c in point]
        cell = [min(int(math.floor(p)), n - 1) for p in pos]
        frac = [p - c for p, c in zip(pos, cell)]
        value = torch.zeros(grid.n_features, dtype=table.dtype)
        for i in (0, 1):
            for j in (0, 1):
                for k in (0, 1):
                    x, y, z = cell[0] + i, cell[1] + j, cell[2] + k
                    if (n + 1) ** 3 <= table_size:
                        row = x + y * (n + 1) + z * (n + 1) ** 2
                    else:
                        row = (x * PRIMES[0] ^ y * PRIMES[1] ^ z * PRIMES[2]) % table_size
                    weight = (frac[0] if i else 1 - frac[0]) * (frac[1] if j else 1 - frac[1]) * (frac[2] if k else 1 - frac[2])
                    value += weight * table[row].detach()
        out.append(value)
    return torch.cat(out)


def small_grid(seed=0) -> TorchHashGrid:
    torch.manual_seed(seed)
    grid = TorchHashGrid(SMALL).double()
    for table in grid.tables:           # well away from the tiny initial values, so errors show
        table.data.uniform_(-1.0, 1.0)
    return grid


def camera(height=32, width=32, elevation=0.0, azimuth=0.0, distance=1.8, fovy=55.0):
    full = lambda v: torch.tensor([float(v)])  # noqa: E731
    return orbit_cameras(full(elevation), full(azimuth), full(distance), full(fovy), height, width)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Thousands of small ops per render: on a shared 2-core machine one thread is steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def blob():
    torch.manual_seed(0)
    return NeRFModel().eval()


def test_torch_hash_encoding_matches_a_corner_by_corner_reference():
    grid = small_grid()
    assert [level.dense for level in grid.levels] == [True, True, False, False, False, False]
    points = torch.rand(40, 3, dtype=torch.float64) * 2 - 1
    points[0] = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)    # the cube's corners stay in the grid
    expected = torch.stack([slow_encoding(grid, p) for p in points])
    assert torch.allclose(grid(points), expected, atol=1e-12)


def test_encoding_jacobian_pullback_matches_finite_differences():
    grid = small_grid()
    points = torch.rand(30, 3, dtype=torch.float64) * 1.8 - 0.9
    g = torch.randn(30, grid.out_dim, dtype=torch.float64)
    _, pullback = grid(points, with_jacobian=True)
    eps = 1e-6
    for axis in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[axis] = eps
        numeric = (((grid(points + step) - grid(points - step)) / (2 * eps)) * g).sum(-1)
        assert torch.allclose(pullback(g)[:, axis], numeric, atol=1e-6)


def test_hand_written_backwards_match_numerical_gradients(monkeypatch):
    monkeypatch.setattr(encoding, "CHUNK", 7)     # several blocks per level
    monkeypatch.setattr(heads, "CHUNK", 5)
    grid = small_grid()
    points = torch.rand(20, 3, dtype=torch.float64) * 2 - 1
    g = torch.randn(20, grid.out_dim, dtype=torch.float64)
    tables = [t.detach().clone().requires_grad_(True) for t in grid.tables]
    both = lambda *t: encoding._HashGridFunction.apply(points, grid.levels, True, *t)  # noqa: E731
    assert torch.autograd.gradcheck(both, tables, fast_mode=True)

    jacobian = torch.randn(3, 4, 6, 2, dtype=torch.float64, requires_grad=True)
    per_level = torch.randn(4, 6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(encoding._Pullback.apply, (jacobian, per_level))
    assert torch.autograd.gradcheck(encoding._Swap01.apply, (per_level,))

    x = torch.randn(23, 12, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in ((16, 12), (1, 8), (3, 8))]
    assert torch.autograd.gradcheck(FusedHeads.apply, (x, *weights), fast_mode=True)


def test_set_active_levels_zeroes_exactly_the_later_levels():
    grid = small_grid()
    points = torch.rand(25, 3, dtype=torch.float64) * 2 - 1
    full = grid(points)
    grid.set_active_levels(3)
    partial = grid(points)
    f = grid.n_features
    assert torch.equal(partial[:, :3 * f], full[:, :3 * f])
    assert torch.count_nonzero(partial[:, 3 * f:]) == 0 and torch.count_nonzero(full[:, 3 * f:]) > 0
    assert int(grid.state_dict()["active_levels"]) == 3      # travels with checkpoints


def test_make_encoding_uses_torch_on_cpu_and_warns_once_without_tinycudann(monkeypatch, caplog):
    assert isinstance(make_encoding(SMALL, "cpu"), TorchHashGrid)
    with pytest.raises(ValueError, match="unknown hash encoding 'cutlass'"):
        make_encoding(SMALL, "cpu", implementation="cutlass")
    monkeypatch.setitem(sys.modules, "tinycudann", None)       # import fails
    monkeypatch.setattr(hash_encoding, "_warned_no_tcnn", False)
    with caplog.at_level(logging.WARNING):
        assert not hash_encoding.tcnn_usable("cuda")
        assert not hash_encoding.tcnn_usable("cuda")
    assert sum("tinycudann" in r.message for r in caplog.records) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tcnn_encoding_on_cuda_masks_levels():
    pytest.importorskip("tinycudann")
    grid = make_encoding(SMALL, "cuda")
    assert isinstance(grid, encoding.TcnnHashGrid)
    grid.set_active_levels(2)
    out = grid(torch.rand(100, 3, device="cuda") * 2 - 1)
    assert out.shape == (100, grid.out_dim) and torch.count_nonzero(out[:, 2 * SMALL.features_per_level:]) == 0


def test_blob_is_occupied_from_the_start(blob):
    grid = blob.occupancy
    occupied = grid.occupied(blob.step_size)
    r = grid.resolution
    centres = (torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), -1) + 0.5) / r * 2 - 1
    radius = centres.norm(dim=-1)
    assert occupied[radius < 0.5].all()
    assert not occupied[radius > 0.85].any()


def test_blob_renders_opaque_in_the_middle_and_empty_at_the_corners(blob):
    out = blob.render(camera(33, 33), "albedo", torch.tensor([[3.0, 0.0, 0.0]]))
    assert out.rgb.shape == (1, 33, 33, 3) and out.opacity.shape == (1, 33, 33, 1)
    assert out.opacity[0, 16, 16, 0] > 0.98
    for corner in (out.opacity[0, 0, 0], out.opacity[0, 0, -1], out.opacity[0, -1, 0], out.opacity[0, -1, -1]):
        assert corner < 1e-3
    # Expected termination distance: the blob's soft surface starts at 1.8 - 0.5 from this camera.
    assert abs(out.depth[0, 16, 16, 0] - 1.3) < 0.35
    # Outside the blob the colour is the background; inside the albedo (0.5 at init).
    assert torch.allclose(out.rgb[0, 0, 0], out.background[0, 0, 0], atol=1e-3)
    assert torch.allclose(out.albedo[0, 16, 16], torch.full((3,), 0.5), atol=0.02)


def test_blob_normals_point_outward(blob):
    directions = F.normalize(torch.randn(200, 3), dim=-1)
    samples = blob.field(0.4 * directions)
    assert ((samples.normal * directions).sum(-1) > 0.99).all()
    out = blob.render(camera(33, 33, elevation=20.0, azimuth=60.0), "albedo", torch.tensor([[0.0, 0.0, 3.0]]))
    to_camera = blob_camera_direction(20.0, 60.0)
    centre = F.normalize(out.normal[0, 16, 16], dim=-1)
    assert torch.dot(centre, to_camera) > 0.9


def blob_camera_direction(elevation, azimuth):
    e, a = math.radians(elevation), math.radians(azimuth)
    return torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])


def test_normals_are_minus_the_normalized_density_gradient():
    torch.manual_seed(1)
    model = NeRFModel(replace(SMALL, log2_table=14, hidden=16))
    for table in model.field.encoding.tables:
        table.data.uniform_(-1.0, 1.0)            # a field far from the blob
    points = torch.rand(50, 3) * 1.2 - 0.6
    eps = 1e-3
    grad = torch.stack([(model.density(points + eps * e) - model.density(points - eps * e)) / (2 * eps)
                        for e in torch.eye(3)], dim=-1)
    normal = model.field(points).normal
    agree = (normal * -F.normalize(grad, dim=-1)).sum(-1)
    assert (agree > 0.99).float().mean() > 0.95     # a few points sit on a cell face, where the gradient jumps


def test_rgb_loss_gradients_reach_tables_mlps_and_background():
    torch.manual_seed(0)
    model = NeRFModel(replace(NeRFSettings(), levels_start=4))
    out = model.render(camera(24, 24), "lambertian", torch.tensor([[2.0, 1.0, 1.0]]))
    (out.rgb ** 2).mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for level in range(4):
        assert grads[f"field.encoding.tables.{level}"].abs().sum() > 0
    for level in range(4, 16):        # inactive levels: no gradient, nothing for Adam to do
        assert grads[f"field.encoding.tables.{level}"] is None
    for name in ("field.hidden_layers.weight", "field.density_out.weight", "field.albedo_out.weight"):
        assert grads[name].abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in model.background_parameters())
    assert {id(p) for p in model.field_parameters()}.isdisjoint({id(p) for p in model.background_parameters()})


def test_orientation_loss_trains_the_normals():
    torch.manual_seed(0)
    model = NeRFModel()
    out = model.render(camera(16, 16), "albedo", torch.tensor([[2.0, 0.0, 0.0]]))
    loss = orientation_loss(out)
    assert loss.ndim == 0 and loss >= 0
    loss.backward()
    assert model.field.hidden_layers.weight.grad.abs().sum() > 0


def test_skipping_empty_space_matches_the_full_render(blob):
    cam, light = camera(16, 16, elevation=30.0, azimuth=45.0), torch.tensor([[2.0, 2.0, 2.0]])
    skipped = blob.render(cam, "lambertian", light)
    blob.settings = replace(blob.settings, occupancy_skipping=False, early_stop=0.0)
    try:
        full = blob.render(cam, "lambertian", light)
    finally:
        blob.settings = replace(blob.settings, occupancy_skipping=True, early_stop=1e-4)
    assert skipped.num_samples < 0.5 * full.num_samples
    # Skipped cells hold only the blob's faint haze (opacity < min(mean, 0.01) per step): what is lost
    # shows as a few percent at the silhouette, where rays graze that haze for longest.
    assert (skipped.opacity - full.opacity).abs().max() < 0.08
    assert (skipped.opacity - full.opacity).abs().mean() < 0.015
    assert (skipped.rgb - full.rgb).abs().max() < 0.05
    solid = full.opacity > 0.5
    assert (skipped.depth - full.depth)[solid].abs().max() < 0.05


def test_early_stop_drops_only_samples_no_light_reaches():
    torch.manual_seed(0)
    solid = NeRFModel(replace(NeRFSettings(), blob_density=200.0)).eval()     # opaque a little way in
    cam, light = camera(24, 24), torch.tensor([[2.0, 1.0, 0.0]])
    pruned = solid.render(cam, "lambertian", light)
    solid.settings = replace(solid.settings, early_stop=0.0)
    every = solid.render(cam, "lambertian", light)
    assert pruned.num_samples < 0.6 * every.num_samples
    for name in ("rgb", "opacity", "depth", "normal"):
        assert torch.allclose(getattr(pruned, name), getattr(every, name), atol=1e-3)


def test_shading_modes_follow_backend_shading(blob):
    cam = camera(17, 17)
    front, behind = torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([[-3.0, 0.0, 0.0]])
    albedo = blob.render(cam, "albedo", front)
    assert torch.allclose(albedo.rgb, albedo.albedo)
    lit = blob.render(cam, "textureless", front)
    foreground = lit.rgb - (1 - lit.opacity) * lit.background
    assert (foreground - foreground.mean(-1, keepdim=True)).abs().max() < 1e-5      # gray
    # The blob's front faces the light: ambient + diffuse * cos ~ 1. Lit from behind, the front gets
    # ambient only; the ~8% of the weight past the soft blob's centre faces the light.
    assert foreground[0, 8, 8, 0] > 0.9 * lit.opacity[0, 8, 8, 0]
    dark = blob.render(cam, "textureless", behind)
    dark_fg = dark.rgb - (1 - dark.opacity) * dark.background
    assert AMBIENT - 0.01 < dark_fg[0, 8, 8, 0] < AMBIENT + 0.1
    # Lambertian = albedo x light per sample; the initial albedo is 0.5 everywhere.
    lambert = blob.render(cam, "lambertian", front)
    lambert_fg = lambert.rgb - (1 - lambert.opacity) * lambert.background
    assert torch.allclose(lambert_fg, 0.5 * foreground, atol=0.01)


def test_empty_space_renders_the_background_and_still_trains_it():
    model = NeRFModel(replace(NeRFSettings(), occupancy_resolution=8))
    model.occupancy.density.zero_()            # nothing occupied: no samples at all
    out = model.render(camera(8, 8), "lambertian", torch.tensor([[2.0, 0.0, 0.0]]))
    assert out.num_samples == 0 and torch.count_nonzero(out.opacity) == 0
    assert torch.equal(out.rgb, out.background)
    (out.rgb.mean() + orientation_loss(out)).backward()
    assert all(p.grad is not None for p in model.background_parameters())


def test_bad_render_arguments_are_user_errors(blob):
    with pytest.raises(UserError, match="shading"):
        blob.render(camera(8, 8), "phong", torch.zeros(1, 3))
    with pytest.raises(UserError, match="light"):
        blob.render(camera(8, 8), "albedo", torch.zeros(3))


def test_density_and_albedo_are_chunk_safe_and_work_without_grad(blob, monkeypatch):
    points = torch.rand(1000, 3) * 2 - 1
    with torch.no_grad():
        density, albedo = blob.density(points), blob.albedo(points)
        monkeypatch.setattr(field_module, "CHUNK", 64)
        assert torch.allclose(blob.density(points), density) and torch.allclose(blob.albedo(points), albedo)
        out = blob.render(camera(16, 16), "lambertian", torch.tensor([[2.0, 0.0, 0.0]]))
    assert density.shape == (1000,) and albedo.shape == (1000, 3)
    assert ((albedo >= 0) & (albedo <= 1)).all()
    assert density[points.norm(dim=-1) < 0.3].min() > 3.0 and density[points.norm(dim=-1) > 0.9].max() < 0.1
    assert not out.rgb.requires_grad


def test_occupancy_update_decays_and_follows_the_density(blob):
    model = NeRFModel(replace(NeRFSettings(), occupancy_resolution=8))
    model.occupancy.density.fill_(100.0)
    model.update_occupancy()
    density = model.occupancy.density
    assert torch.allclose(density, torch.full_like(density, 95.0))      # max(0.95 * old, seen)
    model.occupancy.density.zero_()
    model.update_occupancy()
    assert density[3:5, 3:5, 3:5].min() > 1.0 and density[0, 0, 0] < 0.01


def test_state_dict_round_trip_keeps_occupancy_and_levels():
    torch.manual_seed(0)
    model = NeRFModel(replace(NeRFSettings(), occupancy_resolution=16)).eval()
    model.set_active_levels(5)
    model.occupancy.density[:8] = 0.0          # half the space marked empty
    state = model.state_dict()
    assert "occupancy.density" in state and int(state["field.encoding.active_levels"]) == 5
    torch.manual_seed(1)
    copy = NeRFModel(replace(NeRFSettings(), occupancy_resolution=16)).eval()
    copy.load_state_dict(state)
    cam, light = camera(16, 16), torch.tensor([[2.0, 0.0, 0.0]])
    assert torch.equal(model.render(cam, "lambertian", light).rgb, copy.render(cam, "lambertian", light).rgb)
