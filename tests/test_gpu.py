"""CUDA-only checks: Stable Diffusion's fp16 path against fp32, tiny-cuda-nn's hash grid against the PyTorch
one, and short real training runs. Skipped where PyTorch sees no GPU."""
import pytest
import torch

from backend.config import with_preset
from backend.priors.base import TEXT, UNCOND, View
from backend.priors.sd_random import save_random_pipeline
from backend.priors.stable_diffusion import StableDiffusionPrior

from tests.helpers import PROMPT, random_view

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return save_random_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd", "tiny", seed=0)


def cuda_view(n: int) -> View:
    view = random_view(n)
    return View(view.cameras.to("cuda"), view.shading, view.light_positions.cuda(), view.background.cuda(),
                view.opacity.cuda())


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def test_fp16_prior_runs_channels_last_with_sdpa_and_matches_fp32(sd_folder):
    fp16 = StableDiffusionPrior.load(sd_folder, device="cuda", offline=True)
    fp32 = StableDiffusionPrior.load(sd_folder, device="cuda", offline=True, dtype=torch.float32)
    assert fp16.describe()["dtype"] == "float16" and fp16.unet.dtype == torch.float16
    assert fp16.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fp16.describe()["attention"] == ["AttnProcessor2_0"]

    view = cuda_view(2)
    rgb = torch.rand(2, 3, 32, 32, device="cuda")
    z, t = torch.randn(2, 4, 8, 8, device="cuda"), torch.tensor([800, 200], device="cuda")
    direction = torch.randn(2, 4, 8, 8, device="cuda")
    results = {}
    for prior in (fp16, fp32):
        prior.set_prompts(PROMPT)
        render = rgb.clone().requires_grad_(True)
        x = prior.encode(render)
        e = prior.predict_noise(z, t, (TEXT, UNCOND), view)
        (x * direction).sum().backward()
        assert x.dtype == torch.float32 and e.dtype == torch.float32 and torch.isfinite(render.grad).all()
        results[prior.dtype] = (x.detach(), e, render.grad)
    (x16, e16, g16), (x32, e32, g32) = results[torch.float16], results[torch.float32]
    assert relative_error(x16, x32) < 2e-2
    assert relative_error(e16, e32) < 2e-2
    assert relative_error(g16, g32) < 5e-2


def test_memory_options_keep_the_predictions(sd_folder):
    plain = StableDiffusionPrior.load(sd_folder, device="cuda", offline=True, dtype=torch.float32)
    lean = StableDiffusionPrior.load(sd_folder, device="cuda", offline=True, dtype=torch.float32,
                                     attention_slicing=True, vae_tiling=True, cpu_offload=True)
    assert next(lean.text_encoder.parameters()).device.type == "cpu"
    assert "SlicedAttnProcessor" in lean.describe()["attention"]
    view = cuda_view(1)
    z, t = torch.randn(1, 4, 8, 8, device="cuda"), torch.tensor([500], device="cuda")
    for prior in (plain, lean):
        prior.set_prompts(PROMPT)
    assert relative_error(lean.predict_noise(z, t, (TEXT,), view), plain.predict_noise(z, t, (TEXT,), view)) < 1e-3


def test_tiny_cuda_nn_hash_grid_agrees_with_the_pytorch_one():
    """The two implementations hash and lay out their tables differently, so compare what does not depend on
    that: a constant table gives that constant on active levels and 0 on the others, and every level's
    trilinear weights sum to one, so the table gradient of sum(features) sums to N per active feature."""
    pytest.importorskip("tinycudann")
    from backend.nerf import NeRFSettings
    from backend.nerf.encoding import TcnnHashGrid, TorchHashGrid, make_encoding

    settings = NeRFSettings(hash_levels=6, log2_table=15, levels_start=4)
    assert isinstance(make_encoding(settings, "cuda"), TcnnHashGrid)
    points = torch.rand(4096, 3, device="cuda") * 2 - 1
    expected = torch.zeros(settings.hash_levels, settings.features_per_level, device="cuda")
    expected[:settings.levels_start] = 0.25
    for grid in (TorchHashGrid(settings).cuda(), TcnnHashGrid(settings).cuda()):
        table = next(grid.parameters())
        with torch.no_grad():
            table.fill_(0.25)
        features = grid(points)
        assert features.shape == (len(points), settings.hash_levels * settings.features_per_level)
        torch.testing.assert_close(features.float(), expected.flatten().expand_as(features), atol=1e-3, rtol=0)
        features.sum().backward()
        active = settings.levels_start * settings.features_per_level
        assert float(table.grad.float().sum()) == pytest.approx(len(points) * active, rel=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sds", "sdi"])
def test_short_real_run_with_stable_diffusion_on_cuda(sd_folder, tmp_path, method):
    from backend.train import train

    config = with_preset("tiny", prompt=PROMPT, method=method, prior=str(sd_folder), device="cuda", offline=True,
                         steps=20, preview_every=10, checkpoint_every=0, export_mesh=False)
    result = train(config, tmp_path / method)
    assert result.report["prior"]["dtype"] == "float16" and result.report["prior"]["device"].startswith("cuda")
    assert result.report["steps_done"] == 20 and (tmp_path / method / "turntable.png").is_file()


@pytest.mark.slow
def test_short_real_run_with_the_shapes_prior_exports_a_mesh_on_cuda(tmp_path):
    from backend.train import train

    config = with_preset("tiny", prompt="a red cube", device="cuda", steps=60)
    result = train(config, tmp_path / "run")
    assert result.report["export"] and any(path.suffix == ".glb" for path in result.outputs.values())
