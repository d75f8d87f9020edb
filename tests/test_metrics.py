"""Ground-truth metrics against the shapes prior's catalog."""
import math

import numpy as np
import pytest
import torch
import trimesh

from backend.export.extract import marching_cubes
from backend.metrics import (albedo_error, best_match, chamfer_distance, distinct_colors, field_color,
                             field_iou, field_surface_points, grid_points, point_mesh_distance, surface_metrics,
                             surface_points, volume_iou)
from backend.priors.shapes_world import COLORS, SHAPES, CatalogObject, parse_prompt


def density_of(obj):
    """A 'trained field' that is exactly the object: density > 0 inside."""
    return lambda points: -obj.sdf(points)


def constant_albedo(color):
    return lambda points: torch.tensor(COLORS[color]).expand(len(points), 3)


def test_grid_points_are_the_cell_centres_of_the_bound():
    points = grid_points(4, bound=2.0)
    assert points.shape == (64, 3)
    assert torch.equal(torch.unique(points[:, 0]), torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    assert torch.allclose(points.mean(dim=0), torch.zeros(3))


def test_volume_iou_of_boolean_grids():
    a = torch.tensor([True, True, False, False])
    assert volume_iou(a, a) == 1.0
    assert volume_iou(a, ~a) == 0.0
    assert volume_iou(a, torch.tensor([True, False, True, False])) == pytest.approx(1 / 3)
    assert volume_iou(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0


@pytest.mark.parametrize("shape", list(SHAPES))
def test_an_object_has_iou_one_with_itself(shape):
    obj = CatalogObject(shape, "red")
    assert field_iou(density_of(obj), obj, threshold=0.0, resolution=32) == 1.0


def test_sphere_against_cube_matches_the_analytic_iou():
    sphere, cube = CatalogObject("sphere", "red"), CatalogObject("cube", "red")
    # sphere r 0.5, cube half 0.4: the sphere pokes out of each face as a cap of height 0.1
    cap = math.pi * 0.1 ** 2 * (3 * 0.5 - 0.1) / 3
    v_sphere, v_cube = 4 / 3 * math.pi * 0.5 ** 3, 0.8 ** 3
    inter = v_sphere - 6 * cap
    expected = inter / (v_sphere + v_cube - inter)
    iou = field_iou(density_of(sphere), cube, threshold=0.0, resolution=64)
    assert 0 < iou < 1 and iou == pytest.approx(expected, abs=0.02)


def test_the_threshold_decides_what_is_occupied():
    sphere = CatalogObject("sphere", "red")
    shrunk = field_iou(density_of(sphere), sphere, threshold=0.1, resolution=32)  # a sphere of radius 0.4
    assert shrunk == pytest.approx(0.4 ** 3 / 0.5 ** 3, abs=0.05)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_surface_points_lie_on_the_surface(shape):
    obj = CatalogObject(shape, "blue")
    points = surface_points(obj, 1000, seed=3)
    assert points.shape == (1000, 3)
    assert obj.sdf(points).abs().max() < 1e-3
    assert torch.equal(points, surface_points(obj, 1000, seed=3))  # seeded


def test_surface_points_are_uniform_by_area():
    # Archimedes: on a sphere, z of an area-uniform point is uniform in [-r, r]
    points = surface_points(CatalogObject("sphere", "red"), 4000)
    assert (points[:, 2] > 0.25).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert points.mean(dim=0).abs().max() < 0.03


def test_chamfer_distance():
    a = surface_points(CatalogObject("sphere", "red"), 2000)
    assert chamfer_distance(a, a) == 0.0
    assert chamfer_distance(a, a * 1.2) == pytest.approx(0.1, abs=0.01)   # spheres of radius 0.5 and 0.6
    assert chamfer_distance(a, a + torch.tensor([0.05, 0.0, 0.0])) > 0.0


def test_albedo_error_is_zero_for_the_true_albedo_and_large_for_another_colour():
    obj = CatalogObject("torus", "green", "checkered")
    assert albedo_error(obj.albedo, obj, n=2000) < 1e-6
    error = albedo_error(constant_albedo("green"), obj, n=2000)
    half_white = (torch.tensor(COLORS["white"]) - torch.tensor(COLORS["green"])).abs().mean().item() / 2
    assert error == pytest.approx(half_white, rel=0.25)  # about half the surface is the white accent


def test_best_match_picks_the_shape_by_geometry_and_the_colour_by_albedo():
    blue_cube = CatalogObject("cube", "blue")
    everything = parse_prompt("")
    obj, iou = best_match(density_of(blue_cube), everything, threshold=0.0, resolution=32, albedo_fn=blue_cube.albedo)
    assert obj == blue_cube and iou == 1.0
    spheres = parse_prompt("a sphere")
    obj, iou = best_match(density_of(blue_cube), spheres, threshold=0.0, resolution=32,
                          albedo_fn=constant_albedo("yellow"))
    assert obj == CatalogObject("sphere", "yellow") and 0 < iou < 1


def test_field_surface_points_hug_the_surface():
    cone = CatalogObject("cone", "red")
    points = field_surface_points(density_of(cone), threshold=0.0, resolution=32)
    cell = 2.0 / 32
    assert len(points) > 100 and (cone.sdf(points) < 0).all() and (cone.sdf(points) > -math.sqrt(3) * cell).all()


def test_field_colour_and_distinct_colours_over_seeds():
    sphere = CatalogObject("sphere", "red")
    assert field_color(density_of(sphere), constant_albedo("red"), threshold=0.0, resolution=32) == "red"
    # a noisy, dimmed purple still reads as purple
    noisy = lambda p: (torch.tensor(COLORS["purple"]) * 0.9 + 0.03 * torch.randn(len(p), 3)).clamp(0, 1)  # noqa: E731
    assert field_color(density_of(sphere), noisy, threshold=0.0, resolution=32) == "purple"
    empty = lambda p: torch.zeros(len(p))  # noqa: E731
    assert field_color(empty, constant_albedo("red"), threshold=0.0, resolution=32) is None
    runs = [(density_of(sphere), constant_albedo(c)) for c in ("red", "blue", "red", "green")] \
        + [(empty, constant_albedo("pink"))]
    assert distinct_colors(runs, threshold=0.0, resolution=16) == ["blue", "green", "red"]


# --- the exported surface against the true one (docs/quality.md, "Surface") ---------------------------

def exact_mesh(shape: str, resolution: int = 128):
    """Marching cubes of the object's exact SDF on the export's grid: the best a 128^3 export can do."""
    axis = np.linspace(-1.0, 1.0, resolution)
    points = torch.from_numpy(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)).float()
    return marching_cubes(-SHAPES[shape](points).numpy().reshape((resolution,) * 3), 0.0)


def box_mesh(half: float = 0.4):
    box = trimesh.creation.box(extents=(2 * half,) * 3)
    return np.asarray(box.vertices), np.asarray(box.faces)


def test_point_mesh_distance_is_exact():
    vertices, faces = box_mesh()
    points = np.random.default_rng(0).normal(size=(400, 3)) * 0.5   # inside, outside, near edges and corners
    expected = SHAPES["cube"](torch.from_numpy(points).float()).abs().numpy()
    assert np.abs(point_mesh_distance(points, vertices, faces) - expected).max() < 1e-5
    # a fine mesh (the k-nearest candidates) and one point far away (every face in reach)
    vertices, faces = exact_mesh("sphere", 48)
    far = np.array([[0.0, 0.0, 0.9], [0.01, 0.02, 0.0]])
    assert point_mesh_distance(far, vertices, faces) == pytest.approx([0.4, 0.5 - 0.0224], abs=2e-3)


def test_point_mesh_distance_is_exact_beside_a_long_face():
    # one long face makes the candidates' reach large, as a decimated mesh's few long faces do: every
    # point then takes the second pass, which must still find each point's nearest face
    from backend.metrics import _point_triangle_distance

    vertices, faces = exact_mesh("sphere", 32)
    long_face = np.array([[-0.9, -0.9, 0.8], [0.9, -0.9, 0.8], [0.0, -0.85, 0.81]])
    vertices = np.concatenate([vertices, long_face])
    faces = np.concatenate([faces, [[len(vertices) - 3, len(vertices) - 2, len(vertices) - 1]]])
    points = np.random.default_rng(1).uniform(-0.9, 0.9, size=(200, 3))
    tri = vertices[faces]
    brute = np.array([_point_triangle_distance(np.repeat(p[None], len(faces), 0), tri).min() for p in points])
    assert np.abs(point_mesh_distance(points, vertices, faces) - brute).max() < 1e-12


@pytest.mark.parametrize("shape", ["cube", "cone"])
def test_marching_cubes_of_the_exact_sdf_measures_as_exact(shape):
    obj = CatalogObject(shape, "red")
    m = surface_metrics(*exact_mesh(shape), obj, n=6000)
    assert m["accuracy"] < 5e-4 and m["completeness"] < 1e-3
    assert m["fscore"] > 0.97 and m["normal_error_median"] < 1.0 and m["volume_iou"] > 0.99
    assert abs(m["regions"]["bottom"]["offset"]) < 1e-3 and m["z_min"] == pytest.approx(m["true_z_min"], abs=1e-3)


def test_a_perfect_cube_and_one_scaled_by_one_and_a_half_percent():
    cube = CatalogObject("cube", "red")
    vertices, faces = box_mesh()
    perfect = surface_metrics(vertices, faces, cube, n=6000)
    assert perfect["fscore"] == 1.0 and perfect["accuracy"] < 1e-6 and perfect["completeness"] < 1e-6
    assert perfect["normal_error_median"] < 1e-3 and perfect["flat_share"] == 1.0
    big = surface_metrics(vertices * 1.015, faces, cube, n=6000)   # each face 0.006 out
    assert big["accuracy"] == pytest.approx(0.006, abs=3e-4) and big["offset"] == pytest.approx(0.006, abs=3e-4)
    assert big["completeness"] == pytest.approx(0.006, abs=3e-4)
    assert big["fscore"] == 1.0   # within tau = 0.01
    far = surface_metrics(vertices * 1.03, faces, cube, n=6000)    # 0.012 out: nothing within tau
    assert far["fscore"] == 0.0


def test_the_bottom_region_sees_a_bulging_underside():
    cube = CatalogObject("cube", "red")
    vertices, faces = exact_mesh("cube", 64)
    sagged = vertices.copy()
    low = sagged[:, 2] < -0.39
    sagged[low, 2] -= 0.03 * (1.0 - (sagged[low, 0] / 0.4) ** 2) * (1.0 - (sagged[low, 1] / 0.4) ** 2)
    m = surface_metrics(sagged, faces, cube, n=6000)
    assert m["regions"]["bottom"]["offset"] > 0.005 and abs(m["regions"]["top"]["offset"]) < 1e-3
    assert m["regions"]["bottom"]["normal_error_mean"] > 3 * m["regions"]["top"]["normal_error_mean"]
    assert m["z_min"] < -0.42
    assert m["flat_share"] < surface_metrics(vertices, faces, cube, n=6000)["flat_share"] - 0.05  # a sixth less flat


def test_flipped_faces_read_as_wrong_normals():
    vertices, faces = box_mesh()
    m = surface_metrics(vertices, faces[:, ::-1], CatalogObject("cube", "red"), n=2000)
    assert m["normal_error_median"] == pytest.approx(180.0, abs=1e-3) and m["flat_share"] == 0.0


@pytest.mark.parametrize("extent", [1.1, 0.8])
def test_mesh_occupancy_counts_a_ray_through_an_edge_once(extent):
    """A centred box's face diagonals run through the rays with y == z: each crossing there is on
    the edge two triangles share and must flip the parity once, not twice."""
    from backend.export.raster import mesh_occupancy

    box = trimesh.creation.box(extents=(extent,) * 3)
    axis = (np.arange(16) + 0.5) / 8 - 1
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    truth = (np.abs(x) < extent / 2) & (np.abs(y) < extent / 2) & (np.abs(z) < extent / 2)
    assert np.array_equal(mesh_occupancy(box.vertices, box.faces, axis), truth)


def test_cube_flatness_per_face_finds_a_tilted_underside():
    box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    vertices = np.array(box.vertices)
    bottom = vertices[:, 2] < 0
    vertices[bottom, 2] += 0.2 * vertices[bottom, 0]          # tilt the underside by about 11 degrees
    faces = surface_metrics(vertices, box.faces, CatalogObject("cube", "red"), n=4000)["faces"]
    assert set(faces) == {"-x", "+x", "-y", "+y", "-z", "+z"}
    assert faces["-z"]["flat_share"] == 0.0 and faces["-z"]["normal_error_mean"] > 10
    assert faces["+z"]["flat_share"] == 1.0 and faces["+z"]["normal_error_mean"] < 1e-3
