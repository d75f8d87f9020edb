"""The built-in exact prior: its world (prompts, SDFs, albedo), its renders and its exact posterior."""
import math

import pytest
import torch

from backend.cameras import Cameras, front_camera, orbit_cameras, turntable_cameras
from backend.errors import UserError
from backend.priors import load_prior
from backend.priors.base import NEGATIVE, NFSD_NEGATIVE_PROMPT, TEXT, UNCOND, View
from backend.priors.exact import posterior_mean
from backend.priors.shapes import ShapesPrior
from backend.priors.shapes_world import (SHAPE_RADIUS, CATALOG, COLORS, PATTERNS, SHAPES, CatalogObject, parse_prompt,
                                         sdf_gradient)


def make_view(cameras, shading="albedo", background=(0.0, 0.0, 0.0), light=None):
    b, h, w = len(cameras), cameras.height, cameras.width
    lights = cameras.positions.clone() if light is None else torch.tensor(light).expand(b, 3).clone()
    bg = torch.tensor(background).view(1, 3, 1, 1).expand(b, 3, h, w).clone()
    return View(cameras, shading, lights, bg, torch.zeros(b, 1, h, w))


def to_rgb(x):
    return (x + 1.0) * 0.5


# -- prompts ----------------------------------------------------------------------------------------

def test_a_fully_named_object_selects_exactly_it():
    assert parse_prompt("a red cube") == [CatalogObject("cube", "red", "plain")]
    assert parse_prompt("A Blue striped TORUS") == [CatalogObject("torus", "blue", "striped")]


def test_every_catalog_name_parses_back_to_its_object():
    for obj in CATALOG:
        assert parse_prompt(obj.name) == [obj]


def test_unnamed_colour_means_every_colour_and_unnamed_pattern_means_plain():
    spheres = parse_prompt("a sphere")
    assert {o.color for o in spheres} == set(COLORS)
    assert all(o.shape == "sphere" and o.pattern == "plain" for o in spheres)
    reds = parse_prompt("something red")
    assert {o.shape for o in reds} == set(SHAPES) and all(o.color == "red" and o.pattern == "plain" for o in reds)


@pytest.mark.parametrize("prompt, expected", [
    ("a blue ball", CatalogObject("sphere", "blue")),
    ("a green orb", CatalogObject("sphere", "green")),
    ("a yellow box", CatalogObject("cube", "yellow")),
    ("a purple block", CatalogObject("cube", "purple")),
    ("a pink donut", CatalogObject("torus", "pink")),
    ("an orange ring", CatalogObject("torus", "orange")),
    ("a grey cone", CatalogObject("cone", "gray")),
    ("a cylinder with red stripes", CatalogObject("cylinder", "red", "striped")),
    ("a chequered white cube", CatalogObject("cube", "white", "checkered")),
    ("a black checker ball", CatalogObject("sphere", "black", "checkered")),
    ("a DSLR photo of a red cube, front view", CatalogObject("cube", "red")),
])
def test_synonyms_plurals_filler_and_view_suffixes(prompt, expected):
    assert parse_prompt(prompt) == [expected]


def test_plural_and_several_colours():
    assert {(o.shape, o.color) for o in parse_prompt("red and blue spheres")} == {("sphere", "red"), ("sphere", "blue")}


def test_empty_prompt_is_every_object_even_with_a_view_suffix():
    assert parse_prompt("") == list(CATALOG)
    assert parse_prompt(", side view") == list(CATALOG)
    assert len(CATALOG) == len(SHAPES) * len(COLORS) * len(PATTERNS) >= 5 * 8 * 3


def test_a_prompt_naming_nothing_known_is_an_error_listing_the_vocabulary():
    with pytest.raises(UserError) as info:
        parse_prompt("a photo of a dragon, front view")
    message = str(info.value)
    assert "dragon" in message
    for word in ("sphere", "torus", "red", "gray", "striped", "checkered", "ball", "donut"):
        assert word in message


# -- the world --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", list(SHAPES))
def test_sdf_is_negative_inside_positive_outside_and_inside_the_bound(shape):
    sdf = SHAPES[shape]
    centre = torch.tensor([[0.4, 0.0, 0.0]]) if shape == "torus" else torch.zeros(1, 3)  # the torus's is its tube's
    assert sdf(centre).item() < 0
    corners = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [1.0, -1.0, 1.0]])
    assert (sdf(corners) > 0).all()
    on_bound = torch.nn.functional.normalize(torch.randn(2000, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert (sdf(on_bound * SHAPE_RADIUS[shape] * 1.001) > 0).all()  # the renderer's bounding sphere holds the shape
    assert (sdf(on_bound * SHAPE_RADIUS[shape] * 0.97) < 0).any()   # and is tight


@pytest.mark.parametrize("shape", list(SHAPES))
def test_sdf_is_a_true_distance(shape):
    sdf = SHAPES[shape]
    points = (torch.rand(4000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_(True)
    values = sdf(points)
    (grad,) = torch.autograd.grad(values.sum(), points)
    norm = grad.norm(dim=-1)
    assert ((norm - 1).abs() < 1e-3).float().mean() > 0.98  # |grad| = 1 except on measure-zero creases
    # one step along the gradient lands on the surface: the value IS the distance
    projected = points.detach() - values.detach()[:, None] * sdf_gradient(sdf, points.detach())
    assert (sdf(projected).abs() < 1e-3).float().mean() > 0.97


def test_patterns_mix_the_colour_with_an_accent_and_plain_is_uniform():
    points = torch.rand(2000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    plain = CatalogObject("sphere", "red").albedo(points)
    assert torch.allclose(plain, torch.tensor(COLORS["red"]).expand_as(plain))
    for pattern in ("striped", "checkered"):
        albedo = CatalogObject("sphere", "red", pattern).albedo(points)
        is_red = torch.isclose(albedo, torch.tensor(COLORS["red"])).all(-1)
        is_white = torch.isclose(albedo, torch.tensor(COLORS["white"])).all(-1)
        assert (is_red | is_white).all() and 0.3 < is_red.float().mean() < 0.7
    stripes = CatalogObject("cube", "blue", "striped").albedo(torch.tensor([[0.3, 0.1, 0.05], [-0.3, 0.2, 0.05]]))
    assert torch.equal(stripes[0], stripes[1])  # stripes are horizontal: same height, same colour
    white = CatalogObject("cube", "white", "striped").albedo(points)
    assert (white.std(dim=0) > 0.1).all()  # the white object's stripes stay visible


# -- renders ----------------------------------------------------------------------------------------

def test_a_red_cube_from_the_front_is_red_in_the_middle_and_background_at_the_corners():
    prior = ShapesPrior(resolution=32)
    prior.set_prompts("a red cube")
    view = make_view(front_camera(32, 32), "albedo", background=(0.0, 0.3, 0.9))
    image = to_rgb(prior.candidates(TEXT, view))
    assert image.shape == (1, 1, 3, 32, 32)
    assert torch.allclose(image[0, 0, :, 14:18, 14:18], torch.tensor(COLORS["red"]).view(3, 1, 1), atol=1e-5)
    for corner in (image[0, 0, :, 0, 0], image[0, 0, :, 0, -1], image[0, 0, :, -1, 0], image[0, 0, :, -1, -1]):
        assert torch.allclose(corner, torch.tensor([0.0, 0.3, 0.9]), atol=1e-5)


def test_silhouette_matches_the_analytic_sphere_and_is_anti_aliased():
    prior = ShapesPrior(resolution=32)
    prior.set_prompts("a white sphere")
    cams = front_camera(32, 32)
    alpha = to_rgb(prior.candidates(TEXT, make_view(cams, "albedo")))[0, 0, 0] / COLORS["white"][0]
    def analytic_coverage(k):  # k x k rays per pixel tested against the sphere analytically
        fine = orbit_cameras(cams.elevation, cams.azimuth, cams.distance, torch.rad2deg(cams.fovy), 32 * k, 32 * k)
        origins, dirs = fine.rays()
        closest = torch.linalg.cross(origins, dirs, dim=-1).norm(dim=-1)[0]  # each ray's distance from the centre
        return (closest < 0.5).float().view(32, k, 32, k).mean(dim=(1, 3))
    assert torch.allclose(alpha, analytic_coverage(2), atol=1e-4)  # the tracer is exact at its own subsamples
    reference = analytic_coverage(8)                                # and near the true pixel coverage
    assert (alpha - reference).abs().max() < 0.3
    assert abs(alpha.sum() - reference.sum()) < 0.03 * reference.sum()
    edge = (alpha > 0.05) & (alpha < 0.95)
    assert edge.sum() > 10  # partially covered pixels exist: the silhouette is anti-aliased


def test_lambertian_is_darker_than_albedo_away_from_the_light():
    prior = ShapesPrior(resolution=32)
    prior.set_prompts("a yellow sphere")
    cams = front_camera(32, 32)
    light = (0.0, 3.0, 0.0)  # to the camera's right (+Y)
    albedo = to_rgb(prior.candidates(TEXT, make_view(cams, "albedo", light=light)))[0, 0]
    lit = to_rgb(prior.candidates(TEXT, make_view(cams, "lambertian", light=light)))[0, 0]
    assert (lit <= albedo + 1e-5).all()  # ambient + diffuse never exceeds the albedo
    lit_side, dark_side = lit[:, 16, 22].sum(), lit[:, 16, 9].sum()   # columns right / left of the centre
    assert dark_side < 0.3 * albedo[:, 16, 9].sum() and lit_side > 2 * dark_side
    textureless = to_rgb(prior.candidates(TEXT, make_view(cams, "textureless", light=light)))[0, 0]
    assert torch.allclose(textureless[0], textureless[1], atol=1e-5)  # grey: the colour is gone


def test_batched_cameras_render_as_they_do_alone_and_resize_to_the_prior_resolution():
    prior = ShapesPrior(resolution=16)
    prior.set_prompts("a green checkered cone")
    cams = turntable_cameras(3, 32, 32)
    together = prior.candidates(TEXT, make_view(cams, "lambertian", background=(0.5, 0.5, 0.5)))
    assert together.shape == (1, 3, 3, 16, 16)
    for i in range(3):
        single = Cameras(cams.c2w[i:i + 1], cams.fovy[i:i + 1], cams.elevation[i:i + 1], cams.azimuth[i:i + 1],
                         cams.distance[i:i + 1], 32, 32)
        alone = prior.candidates(TEXT, make_view(single, "lambertian", background=(0.5, 0.5, 0.5)))
        assert torch.allclose(alone[0, 0], together[0, i], atol=1e-4)
    assert not torch.allclose(together[0, 0], together[0, 1])  # a different view is a different picture


def high_frequency_energy(images):
    laplacian = images[..., 1:-1, 1:-1] * 4 - images[..., :-2, 1:-1] - images[..., 2:, 1:-1] \
        - images[..., 1:-1, :-2] - images[..., 1:-1, 2:]
    return laplacian.pow(2).mean().item()


def test_conditions_text_uncond_and_the_blurred_negative():
    prior = ShapesPrior(resolution=32)
    prior.set_prompts("a blue cube", NFSD_NEGATIVE_PROMPT)
    view = make_view(front_camera(32, 32), "lambertian", background=(0.8, 0.8, 0.8))
    text, uncond, negative = (prior.candidates(c, view) for c in (TEXT, UNCOND, NEGATIVE))
    assert text.shape[0] == 1 and uncond.shape[0] == negative.shape[0] == len(CATALOG)
    index = CATALOG.index(CatalogObject("cube", "blue"))
    assert torch.allclose(uncond[index], text[0])          # UNCOND is the mixture over every object
    assert high_frequency_energy(negative) < 0.5 * high_frequency_energy(uncond)
    assert torch.allclose(negative.mean(dim=(-1, -2)), uncond.mean(dim=(-1, -2)), atol=0.02)  # blurred, not changed
    assert prior.describe() == {"name": "shapes", "objects": ["blue cube"], "negative": "blurred"}
    assert prior.ground_truth() == [CatalogObject("cube", "blue")]


def test_a_negative_prompt_naming_objects_means_those_objects():
    prior = ShapesPrior(resolution=16)
    prior.set_prompts("a sphere", negative="a red cube")
    view = make_view(front_camera(16, 16))
    assert prior.candidates(NEGATIVE, view).shape[0] == 1
    assert len(prior.candidates(TEXT, view)) == len(COLORS)
    red_cube = ShapesPrior(resolution=16)
    red_cube.set_prompts("a red cube")
    assert torch.allclose(prior.candidates(NEGATIVE, view), red_cube.candidates(TEXT, view))


def test_renders_are_cached_per_view_and_follow_a_new_background():
    prior = load_prior("shapes", resolution=16)
    assert isinstance(prior, ShapesPrior)
    prior.set_prompts("")
    cams = front_camera(16, 16)
    first = prior.candidates(UNCOND, make_view(cams, background=(0.0, 0.0, 0.0)))
    assert prior.candidates(UNCOND, make_view(cams, background=(0.0, 0.0, 0.0))) is first
    second = prior.candidates(UNCOND, make_view(cams, background=(1.0, 1.0, 1.0)))
    assert torch.allclose(to_rgb(second[:, 0, :, 0, 0]), torch.ones(len(CATALOG), 3))


def test_only_the_shapes_a_condition_names_are_traced_and_they_render_as_in_the_whole_world():
    prior = load_prior("shapes", resolution=16)
    prior.set_prompts("a green cone")
    view = make_view(orbit_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([1.8]),
                                   torch.tensor([50.0]), 16, 16), shading="lambertian")
    alone = prior.candidates(TEXT, view)
    assert set(prior._geometry) == {"cone"}
    world = prior.candidates(UNCOND, view)
    assert set(prior._geometry) == set(SHAPES)
    cone = CATALOG.index(CatalogObject("cone", "green", "plain"))
    assert torch.allclose(alone[0], world[cone], atol=1e-6) and not torch.allclose(world[0], world[cone])


def test_unknown_prompt_and_condition_are_user_errors():
    prior = ShapesPrior(resolution=16)
    with pytest.raises(UserError, match="vocabulary"):
        prior.set_prompts("a castle")
    with pytest.raises(UserError, match="condition"):
        prior.candidates("style", make_view(front_camera(16, 16)))


# -- the exact posterior ----------------------------------------------------------------------------

def weight_on_first(x0_hat, candidates):
    """w in x0_hat = w x_1 + (1 - w) x_2 (least squares)."""
    diff = candidates[0] - candidates[1]
    return (((x0_hat - candidates[1]) * diff).sum() / (diff * diff).sum()).item()


def test_denoiser_returns_the_nearest_candidate_at_small_t_and_the_mean_at_large_t():
    prior = ShapesPrior(resolution=16)
    prior.set_prompts("a red and orange sphere")
    view = make_view(front_camera(16, 16), "lambertian", background=(0.5, 0.5, 0.5))
    candidates = prior.candidates(TEXT, view)
    assert candidates.shape[0] == 2
    x1 = candidates[0]
    gen = torch.Generator().manual_seed(0)
    small, large = [], []
    for _ in range(20):
        eps = torch.randn(x1.shape, generator=gen)
        for t, out in ((1, small), (999, large)):
            tt = torch.tensor([t])
            a, s = prior.schedule.a_s(tt, x1)
            z_t = a * x1 + s * eps
            noise = prior.predict_noise(z_t, tt, [TEXT, UNCOND], view)
            assert noise.shape == (2, 1, 3, 16, 16)
            x0_hat = (z_t - s * noise[0]) / a           # invert eps = (z_t - a x0_hat) / s
            assert torch.allclose(x0_hat, posterior_mean(z_t, candidates, a, s), atol=1e-3)
            out.append(weight_on_first(x0_hat, candidates))
    assert min(small) > 0.999                           # nearly noise-free: the data point itself
    assert abs(sum(large) / len(large) - 0.5) < 0.15    # nearly pure noise: about the mean of the two
    assert math.isfinite(sum(large))
