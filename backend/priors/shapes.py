"""The built-in exact prior (docs/methods.md, "Exact priors"): a finite world of shapes, rendered exactly for each view.

Its denoiser is the exact posterior mean over the renders of the objects a condition selects
(backend/priors/exact.py). TEXT = the objects the prompt names, UNCOND = every object, NEGATIVE =
the objects the negative prompt names or, for a negative prompt naming none (NFSD's "unrealistic,
blurry, ..."), Gaussian-blurred renders of every object.

Rendering is cheap because it is shared and lazy: geometry depends only on the shape, so a shape is
sphere-traced once per camera set (2x2 supersampled for anti-aliasing), and only when a condition names
an object of that shape; every colour and pattern is then shaded at those hit points, and the
subsamples are summed into pixels once for all objects of the shape.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shared.schema import SHAPES_PRIOR

from ..cameras import Cameras
from ..errors import UserError
from ..shading import shade
from .base import NEGATIVE, TEXT, UNCOND, View
from .exact import ExactPrior
from .shapes_world import (CATALOG, COLORS, PATTERNS, SDF, SHAPE_RADIUS, SHAPES, VOCABULARY, CatalogObject,
                           accent_color, parse_prompt, pattern_mask, sdf_gradient, strip_view_suffix,
                           vocabulary_text)

SUPERSAMPLE = 2           # subsamples per pixel side (anti-aliasing)
MAX_TRACE_STEPS = 64
HIT_EPS = 2e-4            # world units: a ray has hit once the SDF is below this
GRAZING_EPS = 5e-3        # rays still marching after MAX_TRACE_STEPS skim an edge: a hit if this close
COMPACT_EVERY = 8         # steps between dropping finished rays (indexing costs more than a few extra steps)
BLUR_SIGMA = 1.0 / 32.0   # NEGATIVE's Gaussian blur, as a fraction of the image size (2 px at 64 px)

# Words a prompt may hold besides the vocabulary: articles, "photo of", view words, joiners.
FILLER = frozenset(("a an the one some of with and in on at made out photo photograph picture image "
                    "render rendering drawing 3d model dslr view front side back overhead top").split())


def unknown_words(prompt: str) -> list[str]:
    """The words of a prompt that are neither in the shapes vocabulary (with simple plurals) nor filler."""
    words = re.findall(r"[a-z0-9]+", strip_view_suffix(prompt).lower())
    known = lambda w: (w in FILLER or w in VOCABULARY or (w.endswith("s") and w[:-1] in VOCABULARY)  # noqa: E731
                       or (w.endswith("es") and w[:-2] in VOCABULARY))
    return list(dict.fromkeys(w for w in words if not known(w)))


def check_prompt_words(prompt: str) -> None:
    """A prompt with words the shapes prior cannot show would train something else in silence
    ("a purple elephant playing chess" -> a purple object): refuse it, naming the words."""
    if prompt.strip() and not re.search(r"[a-z0-9]", strip_view_suffix(prompt).lower()):
        raise UserError(f"the prompt {prompt[:40]!r} has no words the built-in 'shapes' prior can read (it reads "
                        f"plain letters: {vocabulary_text()}); describe the object, e.g. 'a red cube'")
    unknown = unknown_words(prompt)
    if unknown:
        raise UserError(f"the built-in 'shapes' prior does not know {', '.join(map(repr, unknown))} in the prompt "
                        f"{prompt!r}: it knows {vocabulary_text()} (and filler such as 'a', 'the', 'photo of', "
                        "'front view'); remove those words or use a Stable Diffusion model as the prior")


@dataclass
class _Hits:
    """Where one shape's surface is seen: flat subsample indices, hit points and unit normals."""
    index: torch.Tensor    # [M] into the B * Hs * Ws subsamples
    points: torch.Tensor   # [M, 3]
    normals: torch.Tensor  # [M, 3]


@dataclass
class _Layers:
    """Every catalog object of one shape for one view in the prior's space, split so that an object's
    picture is one gather and one add: x = colors[pattern, colour] + base."""
    colors: torch.Tensor  # [P, Q, B, 3, H, W]: twice the premultiplied colour (PATTERNS, COLORS order)
    base: torch.Tensor    # [B, 3, H, W]: the background where the shape leaves it, mapped to [-1, 1]


def sphere_trace(sdf: SDF, origins: torch.Tensor, dirs: torch.Tensor,
                 radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """First hits of rays [R, 3] on an SDF's zero level set, which lies inside the origin-centred
    sphere of `radius`: rays start where they enter it (Hart 1996, sphere tracing).
    Returns (indices of the rays that hit [M], their distances t [M]). The SDF is exact, so a step
    never crosses the surface and a converged ray may keep stepping harmlessly; finished rays are
    dropped from the active set every COMPACT_EVERY steps, so the cost follows the rays still marching."""
    b = (origins * dirs).sum(-1)
    disc = b * b - (origins * origins).sum(-1) + (radius + HIT_EPS) ** 2
    index = torch.nonzero(disc > 0).squeeze(1)
    root = disc[index].sqrt()
    t, t_far = (-b[index] - root).clamp(min=0.0), -b[index] + root
    o, d = origins[index], dirs[index]
    hit_index, hit_t = [], []
    for step in range(1, MAX_TRACE_STEPS + 1):
        dist = sdf(torch.addcmul(o, t[:, None], d))
        t = t + dist
        last = step == MAX_TRACE_STEPS
        if step % COMPACT_EVERY == 0 or last:
            done = dist < (GRAZING_EPS if last else HIT_EPS)
            hit_index.append(index[done])
            hit_t.append(t[done])
            keep = ~done & (t < t_far)
            index, t, t_far, o, d = index[keep], t[keep], t_far[keep], o[keep], d[keep]
            if index.numel() == 0:
                break
    return torch.cat(hit_index), torch.cat(hit_t)


def _blur_matrix(n: int, sigma: float, device: torch.device) -> torch.Tensor:
    """[n, n] matrix of a 1D Gaussian blur with edge padding: blurred = M @ signal."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=device)
    taps = torch.exp(-0.5 * (offsets.float() / sigma) ** 2)
    taps = taps / taps.sum()
    rows = torch.arange(n, device=device)[:, None].expand(-1, len(offsets))
    cols = (rows + offsets).clamp(0, n - 1)  # edge padding: taps past the border land on the edge pixel
    return torch.zeros(n, n, device=device).index_put_((rows, cols), taps.expand(n, -1), accumulate=True)


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [..., H, W] as two small matrix products (far faster on the CPU than
    a convolution over hundreds of single-channel images)."""
    rows = _blur_matrix(images.shape[-2], sigma, images.device)
    cols = _blur_matrix(images.shape[-1], sigma, images.device)
    return rows @ images @ cols.T


def _same(a: tuple, b: tuple | None) -> bool:
    """Cache-key equality: tensors by value, everything else by ==."""
    if b is None or len(a) != len(b):
        return False
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


class ShapesPrior(ExactPrior):
    """The exact prior over the catalog of backend/priors/shapes_world.py, in RGB space ([-1, 1])."""

    name = SHAPES_PRIOR
    # TEXT is the named objects' exact renders, so the conditional needs no sharpening: at a scale s
    # the target moves (s - 1)(D_text - D_uncond) off the object and no method's fixed point is the
    # object any more (measured in docs/quality.md, "Guidance").
    default_cfg = 1.0

    def __init__(self, resolution: int = 64, device: torch.device | str = "cpu"):
        super().__init__(resolution)
        self.device = torch.device(device)
        self._color_names = list(COLORS)
        self._geometry_key: tuple | None = None
        self._geometry: dict[str, _Hits] = {}   # shape -> its hits, for the cameras of _geometry_key
        self._view_key: tuple | None = None
        self._layers: dict[str, _Layers] = {}   # shape -> its objects' layers, for _view_key's view
        self._rendered: dict[str, torch.Tensor] = {}
        self.set_prompts("")

    # -- conditions ---------------------------------------------------------------------------------

    def set_prompts(self, prompt: str, negative: str | None = None, view_dependent: bool = True) -> None:
        """TEXT = the objects `prompt` names ("" = all). NEGATIVE = the objects `negative` names, or
        blurred renders of all objects when it names none (or is None). The view suffix is moot here:
        every candidate is already rendered for the exact view. The prompt may hold only vocabulary
        and filler words (check_prompt_words); the negative prompt may say anything."""
        self.text_objects = parse_prompt(prompt)
        check_prompt_words(prompt)
        self.negative_objects: list[CatalogObject] | None = None
        if negative is not None:
            try:
                self.negative_objects = parse_prompt(negative)
            except UserError:
                self.negative_objects = None  # "unrealistic, blurry, ...": the blurred world
        self._rendered = {}

    def ground_truth(self) -> list[CatalogObject]:
        """The objects the prompt selects (what metrics measure a result against)."""
        return list(self.text_objects)

    def describe(self) -> dict:
        negative = "blurred" if self.negative_objects is None else [o.name for o in self.negative_objects]
        return {"name": self.name, "objects": [o.name for o in self.text_objects], "negative": negative}

    # -- rendering ----------------------------------------------------------------------------------

    @torch.no_grad()
    def candidates(self, condition: str, view: View) -> torch.Tensor:
        """Exact renders [K, B, 3, res, res] in [-1, 1] of the objects `condition` means for `view`.
        Cached while the view (cameras, lights, shading, background) stays the same."""
        self._prepare(view)
        if condition not in self._rendered:
            if condition == TEXT:
                images = self._assemble(self.text_objects, view)
            elif condition == UNCOND:
                images = self._assemble(CATALOG, view)
            elif condition == NEGATIVE:
                if self.negative_objects is not None:
                    images = self._assemble(self.negative_objects, view)
                else:  # blur what UNCOND means (shares its renders)
                    sharp = self.candidates(UNCOND, view)
                    images = _gaussian_blur(sharp, BLUR_SIGMA * self.render_resolution)
            else:
                raise UserError(f"unknown condition {condition!r}; use one of {(TEXT, UNCOND, NEGATIVE)}")
            self._rendered[condition] = images
        return self._rendered[condition]

    def _prepare(self, view: View) -> None:
        """Forget the traces if the cameras changed, and the shading and pictures if anything changed."""
        cams = view.cameras
        geometry_key = (cams.c2w.detach().to(self.device).clone(), cams.fovy.detach().to(self.device).clone(),
                        cams.height, cams.width)
        if not _same(geometry_key, self._geometry_key):
            self._geometry = {}
            self._geometry_key = geometry_key
            self._view_key = None
        view_key = (view.shading, view.light_positions.detach().to(self.device).clone(),
                    view.background.detach().to(self.device).clone())
        if not _same(view_key, self._view_key):
            self._layers = {}
            self._view_key = view_key
            self._rendered = {}

    def _shape_layers(self, shape: str, view: View) -> _Layers:
        """The layers of `shape`'s objects for `view` (the view _prepare saw), traced and shaded on first use."""
        if shape not in self._layers:
            if shape not in self._geometry:
                self._geometry[shape] = self._trace(shape, view.cameras)
            self._layers[shape] = self._shade(self._geometry[shape], view)
        return self._layers[shape]

    def _trace(self, shape: str, cameras: Cameras) -> _Hits:
        ss = SUPERSAMPLE
        fine = Cameras(cameras.c2w, cameras.fovy, cameras.elevation, cameras.azimuth, cameras.distance,
                       cameras.height * ss, cameras.width * ss).to(self.device)
        origins, dirs = fine.rays()
        origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        sdf = SHAPES[shape]
        index, t = sphere_trace(sdf, origins, dirs, SHAPE_RADIUS[shape])
        points = torch.addcmul(origins[index], t[:, None], dirs[index])
        return _Hits(index, points, sdf_gradient(sdf, points))

    def _shade(self, hits: _Hits, view: View) -> _Layers:
        """The picture of every object of the shape traced as `hits`, for the view, as x = 2 * colour + base
        in the prior's space."""
        cams = view.cameras
        b, h, w, ss = len(cams), cams.height, cams.width, SUPERSAMPLE
        palette = torch.tensor(list(COLORS.values()), device=self.device)                     # [Q, 3]
        accent = torch.tensor([self._color_names.index(accent_color(c)) for c in COLORS], device=self.device)
        lights = view.light_positions.detach().to(self.device, torch.float32)
        background = view.background.detach().to(self.device, torch.float32)
        if background.shape[-2:] != (h, w):
            background = F.interpolate(background, size=(h, w), mode="bilinear", align_corners=False)
        q = len(palette)
        colors = torch.zeros(len(PATTERNS), b * h * w, q * 3, device=self.device)
        # subsample (camera, row, col) at supersampled resolution -> its pixel's flat index
        camera, rest = hits.index.div(h * ss * w * ss, rounding_mode="floor"), hits.index % (h * ss * w * ss)
        row, col = rest.div(w * ss, rounding_mode="floor") // ss, (rest % (w * ss)) // ss
        pixel = (camera * h + row) * w + col
        # every palette colour shaded at every hit, [M, Q, 3], weighted as a subsample of its pixel
        # and doubled for x = 2 * rgb - 1 (ExactPrior.encode)
        lit = shade(palette.expand(len(pixel), -1, -1), hits.normals[:, None], hits.points[:, None],
                    lights[camera][:, None], view.shading) * (2.0 / ss ** 2)
        for p, pattern in enumerate(PATTERNS):
            mask = pattern_mask(pattern, hits.points)[:, None, None]
            mixed = lit + (lit[:, accent] - lit) * mask if pattern != "plain" else lit
            # (index_put_ rather than index_add_: the latter stalls on a busy CPU; docs/quality.md,
            # "Figures behind design choices")
            colors[p].index_put_((pixel,), mixed.reshape(len(pixel), q * 3), accumulate=True)
        coverage = torch.bincount(pixel, minlength=b * h * w).float().view(b, 1, h, w) / ss ** 2
        # [P, B*H*W, Q*3] -> [P, Q, B, 3, H, W]
        colors = colors.view(len(PATTERNS), b, h, w, q, 3).permute(0, 4, 1, 5, 2, 3)
        # 2 * (colour + (1 - coverage) * background) - 1 = 2 * colour + base:
        base = (1.0 - coverage) * (2.0 * background - 1.0) - coverage
        return _Layers(colors.contiguous(), base)

    def _assemble(self, objects, view: View) -> torch.Tensor:
        """[K, B, 3, res, res] in [-1, 1]: each object composited over the background. Only the shapes
        the objects have are traced and shaded."""
        shapes = list(dict.fromkeys(o.shape for o in objects))  # in order of first use
        layers = [self._shape_layers(shape, view) for shape in shapes]
        colors, base = torch.stack([layer.colors for layer in layers]), torch.stack([layer.base for layer in layers])
        s = torch.tensor([shapes.index(o.shape) for o in objects], device=self.device)
        p = torch.tensor([PATTERNS.index(o.pattern) for o in objects], device=self.device)
        q = torch.tensor([self._color_names.index(o.color) for o in objects], device=self.device)
        x = colors[s, p, q] + base[s]                                                     # [K, B, 3, H, W]
        if tuple(x.shape[-2:]) != tuple(self.latent_shape[1:]):
            x = self.encode((x.flatten(0, 1) + 1.0) * 0.5).view(*x.shape[:3], *self.latent_shape[1:])
        return x
