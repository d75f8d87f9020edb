import torch

from backend.cameras import orbit_cameras, sample_cameras, turntable_cameras, view_suffix


def test_centre_ray_points_at_origin_from_every_orbit_position():
    gen = torch.Generator().manual_seed(0)
    cams = sample_cameras(16, 9, 9, gen)  # odd size: the centre pixel's ray is the optical axis
    origins, dirs = cams.rays()
    centre = dirs[:, 4, 4]
    to_origin = torch.nn.functional.normalize(-origins[:, 4, 4], dim=-1)
    assert torch.allclose(centre, to_origin, atol=1e-5)
    assert torch.allclose(cams.positions.norm(dim=-1), cams.distance, atol=1e-5)


def test_azimuth_zero_is_on_plus_x_and_image_up_is_world_up():
    cam = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([60.0]), 8, 8)
    assert torch.allclose(cam.positions[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    _, dirs = cam.rays()
    assert dirs[0, 0, :, 2].mean() > 0 > dirs[0, -1, :, 2].mean()   # top row looks up
    assert dirs[0, :, -1, 1].mean() > 0 > dirs[0, :, 0, 1].mean()   # right column looks toward +Y


def test_turntable_starts_at_front_and_goes_round():
    cams = turntable_cameras(8, 4, 4)
    assert cams.azimuth.tolist() == [0.0, 45.0, 90.0, 135.0, -180.0, -135.0, -90.0, -45.0]


def test_view_suffixes_follow_dreamfusion_thresholds():
    assert view_suffix(10, 30) == "front view"
    assert view_suffix(10, 90) == "side view"
    assert view_suffix(10, -170) == "back view"
    assert view_suffix(70, 0) == "overhead view"


def test_training_cameras_see_the_underside():
    # a face is seen no more obliquely than the cameras' elevation allows: the bottom face needs
    # cameras as far below the horizon as the top face gets above it, or it comes out less flat
    # (docs/quality.md, "The underside, from -45 degrees")
    cams = sample_cameras(4000, 4, 4, torch.Generator().manual_seed(0))
    below, above = cams.elevation < -30.0, cams.elevation > 30.0
    assert cams.elevation.min() < -43.0 and cams.elevation.max() > 43.0
    assert 0.12 < below.float().mean() < 0.22 and abs(below.float().mean() - above.float().mean()) < 0.04
    assert (cams.positions[below, 2] < 0).all()
