"""Shape from a mesh (backend/shape_guide.py): the field starts as the mesh, the guide loss (Latent-NeRF's
sketch-shape loss) is 0 on the shape and grows away from it, fades over the run, and the shape survives
checkpoints; a bad mesh path is one clear error."""
import numpy as np
import pytest
import torch
import trimesh

from backend import shape_guide
from backend.checkpoint import load_model
from backend.cli import main
from backend.config import with_preset
from backend.errors import UserError
from backend.events import Progress
from backend.export.frames import to_gltf
from backend.metrics import evaluate, grid_points, occupancy, volume_iou
from backend.nerf import NeRFModel
from backend.nerf.shape_start import shape_bias
from backend.priors.shapes_world import sdf_cube, sdf_cylinder, sdf_sphere
from backend.texture.mesh_input import FIT_RADIUS
from backend.train import train
from tests.helpers import SMALL

pytestmark = pytest.mark.usefixtures("one_thread")
LEVEL = 25.0  # the start's surface density without a mesh_threshold (shape_guide.start_level)


def write_mesh(mesh: trimesh.Trimesh, path, offset=(0.0, 0.0, 0.0), scale=1.0):
    """A mesh given in the backend world, written as a file in glTF's frame (as every mesh file is)."""
    vertices = (np.asarray(mesh.vertices) * scale) + np.asarray(offset)
    trimesh.Trimesh(to_gltf(vertices), mesh.faces, process=False).export(path)
    return path


@pytest.fixture(scope="module")
def cube_file(tmp_path_factory):
    return write_mesh(trimesh.creation.box((0.8, 0.8, 0.8)), tmp_path_factory.mktemp("mesh") / "cube.glb")


def shaped_model(path, fit="none"):
    model = NeRFModel(SMALL)
    vertices, faces, placement = shape_guide.load_shape(str(path), fit)
    shape_guide.set_shape(model, shape_guide.mesh_sdf_grid(vertices, faces), LEVEL, placement)
    return model


def iou_with(model, sdf) -> float:
    return volume_iou(occupancy(model.density, LEVEL, 64), evaluate(sdf, grid_points(64)) < 0)


def test_the_field_starts_as_the_mesh_and_its_occupancy_grid_covers_it(cube_file, tmp_path):
    model = shaped_model(cube_file)
    assert iou_with(model, sdf_cube) > 0.97
    assert iou_with(NeRFModel(SMALL), sdf_cube) < 0.2  # the blob at this level is far from the cube
    # every occupancy cell with a point of the cube in it is marked occupied from the first step
    inside = evaluate(sdf_cube, grid_points(model.occupancy.resolution)) < -0.02
    occupied = model.occupancy.occupied(model.step_size).flatten()
    assert occupied[inside].all()

    # a 16-sided cylinder along the backend's Z (up), off-centre and twice too big: `fit auto` brings it in
    cylinder = trimesh.creation.cylinder(radius=0.4, height=0.8, sections=16)
    path = write_mesh(cylinder, tmp_path / "cylinder.glb", offset=(3.0, -2.0, 5.0), scale=2.0)
    fitted = shaped_model(path, fit="auto")
    scale = FIT_RADIUS / float(np.hypot(0.4, 0.4))  # fit auto: the farthest vertex at FIT_RADIUS
    assert iou_with(fitted, lambda p: sdf_cylinder(p / scale) * scale) > 0.9
    placement = shape_guide.placement_of(fitted)  # kept with the field, to put the result back
    assert np.allclose(placement.centre, (3.0, -2.0, 5.0), atol=1e-5) and np.isclose(placement.scale, scale / 2.0)
    assert shape_guide.placement_of(NeRFModel(SMALL)) is None


def test_the_guide_loss_is_zero_for_the_shape_and_grows_away_from_it():
    points = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
    sdf = sdf_cube(points)
    sigma = 0.2

    def loss(density_sdf):
        return shape_guide.guide_loss(torch.where(density_sdf(points) < 0, 1e4, 0.0), sdf, sigma).item()

    assert loss(sdf_cube) == 0.0
    near = loss(lambda p: sdf_cube(p) - 0.02)   # 0.02 too big all round: lenient near the surface
    far = loss(lambda p: sdf_cube(p) - 0.2)     # 0.2 too big
    sphere = loss(sdf_sphere)
    assert 0.0 < near < 0.01 * far and sphere > 0.0
    # the blob at the start of a run, compared with the cube
    blob = NeRFModel(SMALL).density(points).detach()
    assert shape_guide.guide_loss(blob, sdf, sigma).item() > 10 * near


def test_the_guide_fades_linearly_and_a_run_reads_its_settings(cube_file):
    assert [shape_guide.guide_strength(s, 2.0, 100) for s in (0, 50, 100, 150)] == [2.0, 1.0, 0.0, 0.0]
    config = with_preset("tiny", prompt="a red cube", steps=40, source="shape", source_mesh=str(cube_file),
                         fit="none", shape_strength=3.0).resolved()
    model = NeRFModel(SMALL)
    guide = shape_guide.prepare(model, config, fresh=True)
    generator = torch.Generator().manual_seed(0)
    assert guide.decay_steps == 40 and guide.strength == 3.0 and shape_guide.start_level(config) == LEVEL
    assert guide(0, generator).item() > 0.0 and guide(40, generator) is None
    blob = NeRFModel(SMALL)
    assert shape_guide.prepare(blob, config.__class__(**{**config.to_dict(), "source": "new"}), True) is None
    assert blob.field.shape_grid.numel() == 0
    no_guide = shape_guide.prepare(NeRFModel(SMALL), config.__class__(**{**config.to_dict(), "shape_strength": 0.0,
                                                                          "shape_decay_steps": 5}), True)
    assert no_guide is None


def test_the_bias_and_its_gradient_agree_and_the_autograd_path_matches():
    model = NeRFModel(SMALL)
    shape_guide.set_shape(model, shape_guide.mesh_sdf_grid(*_cube_arrays()), LEVEL)
    field = model.field
    points = torch.rand(4000, 3, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.6
    bias, grad = shape_bias(field.shape_grid, field.shape_settings, points)
    # finite differences of the bias where it is not clamped (the thin shell around the surface): the
    # same direction (the gradient grid is central differences of the sdf, so not to the last digit)
    level_raw, _, floor, ceiling = field.shape_settings[:4].tolist()
    shell = (bias > floor + 1.0) & (bias < ceiling - 1.0)
    step = 1e-4
    numeric = torch.stack([
        (shape_bias(field.shape_grid, field.shape_settings, points + offset)[0]
         - shape_bias(field.shape_grid, field.shape_settings, points - offset)[0]) / (2 * step)
        for offset in torch.eye(3) * step], dim=1)
    cosine = torch.nn.functional.cosine_similarity(numeric[shell], grad[shell], dim=1)
    assert shell.sum() >= 5 and (cosine > 0.95).float().mean() >= 0.9
    # the tiny-cuda-nn path (autograd for the network, the bias in closed form) gives the same field
    with torch.no_grad():
        for parameter in field.encoding.parameters():
            parameter.zero_()
    fused, autograd = field(points), field._forward_autograd(points)
    assert torch.allclose(fused.density, autograd.density) and torch.allclose(fused.normal, autograd.normal)


def _cube_arrays():
    cube = trimesh.creation.box((0.8, 0.8, 0.8))
    return np.asarray(cube.vertices), np.asarray(cube.faces)


def test_resume_and_reexport_keep_the_shape_without_the_mesh_file(tmp_path):
    mesh = write_mesh(trimesh.creation.box((0.8, 0.8, 0.8)), tmp_path / "cube.glb")
    config = with_preset("tiny", prompt="a red cube", steps=8, checkpoint_every=0, preview_every=0,
                         export_mesh=False, source="shape", source_mesh=str(mesh), fit="none")
    calls = iter(range(1000))
    out = tmp_path / "run"
    assert train(config, out, should_stop=lambda: next(calls) >= 3).stopped
    mesh.unlink()  # a resumed run and a re-export read the shape from the checkpoint
    events, calls = [], iter(range(1000))
    assert train(config, out, on_event=events.append, should_stop=lambda: next(calls) >= 2, resume=True).stopped
    assert [e.step for e in events if isinstance(e, Progress)] == [4, 5]
    model, _ = load_model(out / "checkpoint.pt")
    assert model.field.shape_grid.shape == (4, *(shape_guide.GRID_RESOLUTION,) * 3)
    assert iou_with(model, sdf_cube) > 0.9 and shape_guide.placement_of(model).scale == 1.0


def test_a_checkpoint_without_a_shape_loads_as_the_blob():
    state = NeRFModel(SMALL).state_dict()
    for key in ("field.shape_grid", "field.shape_settings"):
        state.pop(key)  # a checkpoint written before shape starts existed
    model = NeRFModel(SMALL)
    model.load_state_dict(state)
    assert model.field.shape_grid.numel() == 0 and model.density(torch.zeros(1, 3)).item() > 9.0


def test_a_missing_mesh_is_one_clear_error(tmp_path, capsys):
    config = with_preset("tiny", prompt="a red cube", steps=2, source="shape",
                         source_mesh=str(tmp_path / "missing.glb"))
    with pytest.raises(UserError, match="no mesh file at .*missing.glb: check the path"):
        train(config, tmp_path / "run")
    code = main(["generate", "a red cube", "--preset", "tiny", "--shape", str(tmp_path / "missing.glb"),
                 "--out", str(tmp_path / "run2")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and "missing.glb" in error
