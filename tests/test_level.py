"""The export's surface level, chosen from the field's renders (backend/export/level.py)."""
import math

import pytest
import torch

from backend.errors import UserError
from backend.export import export_mesh
from backend.export.level import surface_level
from backend.priors import shapes_world as world


class ProfileField:
    """density = profile(depth below the surface of an SDF), albedo grey."""

    def __init__(self, sdf, profile):
        self.sdf, self.profile = sdf, profile

    def density(self, points):
        return self.profile(-self.sdf(points))

    def albedo(self, points):
        return torch.full((len(points), 3), 0.5)


def test_a_hard_surface_gives_the_middle_of_the_levels_that_agree():
    # a step of height 200: a ray is opaque when it meets density 200 (but for a chord of under
    # ln 2 / 200 across a corner), so every level in (0, 200] draws the rendered silhouettes. Every
    # peak on the outline is 200, so there is no line to fit: the rule takes the middle
    field = ProfileField(world.sdf_cube, lambda depth: 200.0 * (depth > 0).float())
    level = surface_level(field)
    assert level.level == pytest.approx(100.0) and level.rays > 5000 and "agree best" in level.rule


@pytest.mark.parametrize("slope", [200.0, 2000.0])
def test_a_soft_surface_gives_the_density_at_the_rendered_silhouette(slope):
    # density rising linearly (slope a) into a sphere of radius R: a ray passing delta inside its
    # rim meets at most a delta, over a chord of 2 sqrt(2 R delta), so its optical depth is
    # (4/3) a delta sqrt(2 R delta). It reaches ln 2 (opacity 0.5) at the level a delta below.
    # At slope 2000 that chord is about three coarse steps long: read coarsely, or with every view's
    # pixel grid meeting the outline at the same distances, the level comes out 2-40% off.
    rim = world.SPHERE_RADIUS + 0.1
    field = ProfileField(world.sdf_sphere, lambda depth: slope * (depth + 0.1))
    delta = (3.0 * math.log(2.0) / (4.0 * slope * math.sqrt(2.0 * rim))) ** (2.0 / 3.0)
    level = surface_level(field)
    assert level.level == pytest.approx(slope * delta, rel=0.015) and "fitted" in level.rule
    assert surface_level(field, rays=24).level == pytest.approx(slope * delta, rel=0.015)


def test_an_empty_field_says_what_to_do():
    with pytest.raises(UserError, match="train longer"):
        surface_level(ProfileField(world.sdf_sphere, lambda depth: 0.0 * depth))


def test_export_without_a_threshold_uses_and_reports_the_level(tmp_path):
    # the density is linear everywhere (negative beyond 0.1 outside the sphere, which a render reads
    # as empty), so marching cubes' linear interpolation puts the mesh exactly at the level
    slope = 20000.0
    field = ProfileField(world.sdf_sphere, lambda depth: slope * (depth + 0.1))
    result = export_mesh(field, tmp_path, resolution=48, face_budget=2000, texture_size=64, smooth=False)
    level = result.stats["level"]
    assert result.stats["threshold"] == pytest.approx(level["level"], rel=1e-4) and "silhouettes" in level["rule"]
    # the mesh lies at that level: depth = level / slope below where the density starts
    from backend.export.readback import load_asset
    radius = torch.from_numpy(load_asset(result.paths["mesh.glb"]).vertices).norm(dim=1)
    assert radius.mean().item() == pytest.approx(world.SPHERE_RADIUS + 0.1 - level["level"] / slope, abs=0.002)
    given = export_mesh(field, tmp_path / "given", threshold=50.0, resolution=32, face_budget=2000, texture_size=64)
    assert given.stats["level"] == {"level": 50.0, "rule": "given", "rays": 0}


def test_the_export_command_chooses_the_level_by_default_and_on_request(tmp_path, capsys):
    import json

    from backend.checkpoint import nerf_settings, save_checkpoint
    from backend.cli import main
    from backend.config import with_preset
    from backend.nerf import NeRFModel

    def export(folder, *flags):
        assert main(["export", str(folder), "--out", str(tmp_path / "out"), "--resolution", "24", "--faces", "300",
                     "--texture-size", "32", *flags]) == 0
        out = capsys.readouterr().out
        return json.loads(out[out.index("{"):])

    torch.manual_seed(0)
    for name, threshold in (("auto", None), ("fixed", 5.0)):   # a run that set no level, and one that set 5
        config = with_preset("tiny", prompt="a red cube", mesh_threshold=threshold)
        model = NeRFModel(nerf_settings(config.resolved()))    # the initial density blob is opaque
        (tmp_path / name).mkdir()
        save_checkpoint(tmp_path / name / "checkpoint.pt", config=config.to_dict(), step=0, model=model.state_dict())
    assert "silhouettes" in export(tmp_path / "auto")["level"]["rule"]
    assert export(tmp_path / "fixed")["level"] == {"level": 5.0, "rule": "given", "rays": 0}
    assert "silhouettes" in export(tmp_path / "fixed", "--threshold", "auto")["level"]["rule"]
