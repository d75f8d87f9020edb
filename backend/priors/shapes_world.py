"""The world of the built-in exact prior (docs/design.md, "The exact prior"): shapes x colours x patterns, and the prompts
that name them.

Every object is an exact signed distance function (negative inside, |grad| = 1) with a fixed pose,
centred at the origin, +Z up, about the size of the NeRF's initial density blob (radius 0.5), and
an albedo defined in world space. Pure torch, no state: the renderer (shapes.py) and the metrics
(backend/metrics.py) both measure against these same functions.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Callable

import torch

from ..cameras import VIEW_SUFFIXES
from ..errors import UserError

SDF = Callable[[torch.Tensor], torch.Tensor]

# Sizes (world units). Every shape lies inside a sphere of radius SHAPE_RADIUS (< 0.7), well inside [-1, 1]^3.
SPHERE_RADIUS = 0.5
CUBE_HALF = 0.4
CYLINDER_RADIUS, CYLINDER_HEIGHT = 0.4, 0.8
CONE_RADIUS, CONE_HEIGHT = 0.45, 0.9          # base disc at z = -h/2, apex at z = +h/2
TORUS_MAJOR, TORUS_MINOR = 0.4, 0.16          # ring in the XY plane

# World-space pattern sizes: horizontal bands STRIPE_WIDTH tall, 3D checks CHECK_SIZE wide. Band
# borders (multiples of 0.12) miss every flat face (z = +-0.4, -0.45), so no face flickers.
STRIPE_WIDTH = 0.12
CHECK_SIZE = 0.2


def _radial(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance from the Z axis, z): the meridian half-plane of a solid of revolution about Z."""
    return points[..., :2].norm(dim=-1), points[..., 2]


def _segment_distance(px: torch.Tensor, py: torch.Tensor, a: tuple[float, float],
                      b: tuple[float, float]) -> torch.Tensor:
    """Distance from 2D points (px, py) to the segment a-b."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    u = (((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0)
    return torch.hypot(px - ax - u * dx, py - ay - u * dy)


def sdf_sphere(points: torch.Tensor) -> torch.Tensor:
    return points.norm(dim=-1) - SPHERE_RADIUS


def sdf_cube(points: torch.Tensor) -> torch.Tensor:
    # outside: distance to the box; inside: minus the distance to the nearest face.
    q = points.abs() - CUBE_HALF
    return q.clamp(min=0.0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0.0)


def sdf_cylinder(points: torch.Tensor) -> torch.Tensor:
    rho, z = _radial(points)
    qx, qz = rho - CYLINDER_RADIUS, z.abs() - 0.5 * CYLINDER_HEIGHT
    return torch.hypot(qx.clamp(min=0.0), qz.clamp(min=0.0)) + torch.maximum(qx, qz).clamp(max=0.0)


def sdf_cone(points: torch.Tensor) -> torch.Tensor:
    # The distance to a solid of revolution is the 2D distance, in the meridian half-plane, to its
    # profile's boundary: here the base segment and the slanted side of a right triangle.
    rho, z = _radial(points)
    half = 0.5 * CONE_HEIGHT
    base = _segment_distance(rho, z, (0.0, -half), (CONE_RADIUS, -half))
    side = _segment_distance(rho, z, (CONE_RADIUS, -half), (0.0, half))
    inside = (z > -half) & (rho < CONE_RADIUS * (half - z) / CONE_HEIGHT)
    distance = torch.minimum(base, side)
    return torch.where(inside, -distance, distance)


def sdf_torus(points: torch.Tensor) -> torch.Tensor:
    rho, z = _radial(points)
    return torch.hypot(rho - TORUS_MAJOR, z) - TORUS_MINOR


SHAPES: dict[str, SDF] = {
    "sphere": sdf_sphere,
    "cube": sdf_cube,
    "cylinder": sdf_cylinder,
    "cone": sdf_cone,
    "torus": sdf_torus,
}

# Radius of the smallest origin-centred sphere holding each shape (the renderer starts its rays there).
SHAPE_RADIUS: dict[str, float] = {
    "sphere": SPHERE_RADIUS,
    "cube": CUBE_HALF * 3 ** 0.5,
    "cylinder": float(torch.tensor([CYLINDER_RADIUS, 0.5 * CYLINDER_HEIGHT]).norm()),
    "cone": float(torch.tensor([CONE_RADIUS, 0.5 * CONE_HEIGHT]).norm()),   # the base rim
    "torus": TORUS_MAJOR + TORUS_MINOR,
}

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "orange": (0.95, 0.50, 0.05),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.65, 0.20),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.10, 0.25, 0.90),
    "purple": (0.55, 0.15, 0.75),
    "pink": (0.95, 0.50, 0.70),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
    "black": (0.08, 0.08, 0.08),
}

PATTERNS = ("plain", "striped", "checkered")


def accent_color(color: str) -> str:
    """The second colour of a pattern: white, or black on white (else the pattern would vanish)."""
    return "black" if color == "white" else "white"


def pattern_mask(pattern: str, points: torch.Tensor) -> torch.Tensor:
    """1 where `pattern` shows its accent colour at world points [..., 3], else 0. Returns [...]."""
    if pattern == "plain":
        return points.new_zeros(points.shape[:-1])
    if pattern == "striped":
        cells = torch.floor(points[..., 2] / STRIPE_WIDTH)
    elif pattern == "checkered":
        # offset half a check, so no flat face (cube +-0.4, cylinder caps +-0.4) lies on a check border
        cells = torch.floor(points / CHECK_SIZE + 0.5).sum(dim=-1)
    else:
        raise ValueError(f"unknown pattern {pattern!r}; use one of {PATTERNS}")
    return torch.remainder(cells, 2.0)


def sdf_gradient(sdf: SDF, points: torch.Tensor, h: float = 1e-4) -> torch.Tensor:
    """Unit normals of an SDF at points [N, 3] by tetrahedral finite differences (4 evaluations,
    no autograd, so it works under no_grad)."""
    k = points.new_tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
    values = sdf((points[:, None, :] + h * k).reshape(-1, 3)).reshape(-1, 4, 1)
    return torch.nn.functional.normalize((values * k).sum(dim=1), dim=-1)


@dataclass(frozen=True)
class CatalogObject:
    shape: str
    color: str
    pattern: str = "plain"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.color not in COLORS or self.pattern not in PATTERNS:
            raise UserError(f"no catalog object {self.color!r} {self.pattern!r} {self.shape!r}; "
                            f"use a shape from {list(SHAPES)}, a colour from {list(COLORS)} "
                            f"and a pattern from {list(PATTERNS)}")

    @property
    def name(self) -> str:
        """'red cube', 'red striped cube': a prompt that selects exactly this object."""
        words = [self.color] + ([] if self.pattern == "plain" else [self.pattern]) + [self.shape]
        return " ".join(words)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return SHAPES[self.shape](points)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """Colour in [0, 1] at world points [N, 3] -> [N, 3]."""
        base = points.new_tensor(COLORS[self.color])
        accent = points.new_tensor(COLORS[accent_color(self.color)])
        mask = pattern_mask(self.pattern, points)[..., None]
        return base + (accent - base) * mask


CATALOG: tuple[CatalogObject, ...] = tuple(
    CatalogObject(shape, color, pattern) for shape, color, pattern in itertools.product(SHAPES, COLORS, PATTERNS))

# Word -> (kind, canonical name). Canonical names map to themselves.
VOCABULARY: dict[str, tuple[str, str]] = {
    **{name: ("shape", name) for name in SHAPES},
    **{name: ("color", name) for name in COLORS},
    **{name: ("pattern", name) for name in PATTERNS},
    **{w: ("shape", "sphere") for w in ("ball", "orb", "globe")},
    **{w: ("shape", "cube") for w in ("box", "block", "cuboid", "dice")},
    **{w: ("shape", "cylinder") for w in ("tube", "pillar")},
    **{w: ("shape", "torus") for w in ("donut", "doughnut", "ring", "tori")},
    **{w: ("color", "purple") for w in ("violet",)},
    **{w: ("color", "cyan") for w in ("teal", "turquoise")},
    **{w: ("color", "gray") for w in ("grey",)},
    **{w: ("color", "pink") for w in ("magenta",)},
    **{w: ("pattern", "plain") for w in ("solid", "uniform")},
    **{w: ("pattern", "striped") for w in ("stripes", "stripe", "stripy", "stripey")},
    **{w: ("pattern", "checkered") for w in ("checker", "checkers", "checked", "chequered", "checkerboard",
                                             "chequerboard")},
}


def vocabulary_text() -> str:
    """The vocabulary as one line, for error messages and help."""
    by_kind: dict[str, list[str]] = {"shape": [], "color": [], "pattern": []}
    for word, (kind, _) in VOCABULARY.items():
        by_kind[kind].append(word)
    return "; ".join(f"{kind}s: {', '.join(words)}" for kind, words in by_kind.items())


def _lookup(word: str) -> tuple[str, str] | None:
    """The vocabulary entry of a word, also for simple plurals ('spheres', 'boxes')."""
    for candidate in (word, word[:-1] if word.endswith("s") else None, word[:-2] if word.endswith("es") else None):
        if candidate and candidate in VOCABULARY:
            return VOCABULARY[candidate]
    return None


def strip_view_suffix(prompt: str) -> str:
    """'a red cube, front view' -> 'a red cube' (DreamFusion's view-dependent suffixes)."""
    text = prompt.strip()
    for suffix in VIEW_SUFFIXES:
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)].rstrip().rstrip(",").rstrip()
            break
    return text


def parse_prompt(prompt: str) -> list[CatalogObject]:
    """The catalog objects a prompt selects. Unnamed parts are open: no colour = every colour, no shape
    = every shape; no pattern = plain. The empty prompt selects every object. Words outside the
    vocabulary ('a', 'photo', 'of', ...) are ignored; a prompt naming nothing known is an error."""
    text = strip_view_suffix(prompt)
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        return list(CATALOG)
    named: dict[str, list[str]] = {"shape": [], "color": [], "pattern": []}
    for word in words:
        entry = _lookup(word)
        if entry and entry[1] not in named[entry[0]]:
            named[entry[0]].append(entry[1])
    if not any(named.values()):
        raise UserError(f"the built-in 'shapes' prior knows no object in the prompt {prompt!r}; name a shape, "
                        f"colour or pattern from its vocabulary ({vocabulary_text()}), e.g. 'a red cube', "
                        f"or use a Stable Diffusion model as the prior")
    shapes = named["shape"] or list(SHAPES)
    colors = named["color"] or list(COLORS)
    patterns = named["pattern"] or ["plain"]
    wanted = set(itertools.product(shapes, colors, patterns))
    return [obj for obj in CATALOG if (obj.shape, obj.color, obj.pattern) in wanted]


def nearest_color(rgb: torch.Tensor) -> list[str]:
    """The nearest named colour of each RGB [N, 3] in [0, 1]."""
    palette = rgb.new_tensor(list(COLORS.values()))
    names = list(COLORS)
    return [names[i] for i in torch.cdist(rgb.reshape(-1, 3), palette).argmin(dim=-1).tolist()]
