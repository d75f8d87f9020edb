"""Shape from a mesh (source "shape"): the field starts as the artist's mesh, and an optional guide loss
keeps it near that mesh while the prior shapes it (docs/methods.md, "Shape from a mesh").

1. The mesh (backend/texture/mesh_input.py: read, checked, placed by `fit`) becomes a signed-distance
   grid over the field's box [-1, 1]^3 (`mesh_sdf_grid`: exact point-triangle distances near the surface,
   approximate far away; inside by ray parity along the three axes, majority vote).
2. That grid replaces the starting density blob (backend/nerf/field.py): the density bias is a steep,
   clamped linear function of the sdf (`bias_settings`), so at the start the field's density equals
   the surface level exactly on the mesh, and its occupancy at that level is the mesh's inside. The
   grid, the bias settings and the fit are buffers of the field: they travel with checkpoints, so a
   resumed run or a re-export needs no mesh file (`placement_of` gives the fit back).
3. The guide loss is Latent-NeRF's sketch-shape loss (Metzer et al. 2023, eq. 4): `guide_loss`,
   applied each step by `ShapeGuide`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .nerf.shape_start import sample_grid

GRID_RESOLUTION = 64      # SDF grid nodes per axis over [-1, 1]^3 (node spacing 2/63)
SHELL = 0.025             # outside the mesh the start's density falls from the surface level to < 1 over this
NEAR_CELLS = 4            # exact distances within this many node spacings of the surface
COARSE_RESOLUTION = 17    # far from the surface: distances to surface samples on a coarse grid, interpolated
MAX_GUIDE_FACES = 20_000  # larger meshes are simplified first: the guide is a blocked-out shape
GUIDE_POINTS = 4096       # random points in the box per step for the guide loss
# Latent-NeRF's leniency: sigma_S = 0.3 for a mesh normalised to radius 0.7 (its `proximal_surface`
# and `mesh_scale` defaults), i.e. 0.3 / 0.7 of the mesh's bounding radius whatever its size here.
SIGMA_PER_RADIUS = 0.3 / 0.7
MIN_LEVEL = 0.1           # a surface level of 0 (any density) would put the start's surface at -infinity
DELTA = 0.2               # Latent-NeRF's alpha = 1 - exp(-DELTA sigma) of its shape loss (densities on this scale)
CE_CLAMP = 0.01           # Latent-NeRF's clamp of the target occupancy inside its cross-entropy


def grid_nodes(resolution: int = GRID_RESOLUTION) -> torch.Tensor:
    """The node coordinates along one axis: linspace(-1, 1, R) (grid_sample's align_corners=True)."""
    return torch.linspace(-1.0, 1.0, resolution, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------
# The mesh's signed distance on a grid


def point_triangle_distance(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Distance [N] from points p [N, 3] to triangles (a, b, c) [N, 3] each: to the plane where the point
    projects inside the triangle, else to the nearest edge (degenerate triangles: edges only)."""
    corners = torch.stack([a, b, c], dim=1)                  # [N, 3 corners, 3]
    edges = torch.stack([b - a, c - b, a - c], dim=1)        # edge k runs from corner k
    to_point = p[:, None] - corners
    normal = torch.linalg.cross(edges[:, 0], -edges[:, 2], dim=-1)
    area2 = (normal * normal).sum(-1)
    inside = (torch.linalg.cross(edges, to_point, dim=-1) * normal[:, None]).sum(-1).amin(1) >= 0
    inside &= area2 > 1e-20
    plane = (to_point[:, 0] * normal).sum(-1).abs() / area2.clamp_min(1e-20).sqrt()
    along = ((to_point * edges).sum(-1) / (edges * edges).sum(-1).clamp_min(1e-30)).clamp(0.0, 1.0)
    edge = (to_point - along[..., None] * edges).norm(dim=-1).amin(1)
    return torch.where(inside, plane, edge)


def _box_pairs(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (item, integer point) with lo <= point <= hi, for boxes lo, hi [M, k]: ([P], [P, k])."""
    size = (hi - lo + 1).clamp(min=0)
    counts = size.prod(dim=1)
    item = torch.repeat_interleave(torch.arange(len(lo)), counts)
    local = torch.arange(int(counts.sum())) - (torch.cumsum(counts, 0) - counts)[item]
    index = []
    for axis in reversed(range(lo.shape[1])):
        index.append(lo[item, axis] + local % size[item, axis])
        local = local // size[item, axis]
    return item, torch.stack(index[::-1], dim=1)


def _triangle_chunks(triangles: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, budget: int = 1 << 22):
    """Split the triangles so that each chunk's box pairs stay under `budget` (bounded memory)."""
    counts = (hi - lo + 1).clamp(min=0).prod(dim=1)
    start, total = 0, 0
    for i, count in enumerate(counts.tolist()):
        if total + count > budget and i > start:
            yield slice(start, i)
            start, total = i, 0
        total += count
    yield slice(start, len(triangles))


def _unsigned_distance(triangles: torch.Tensor, resolution: int) -> torch.Tensor:
    """|distance| [R, R, R] from each grid node to the mesh: exact within NEAR_CELLS node spacings of
    the surface (each triangle visits the nodes of its box grown by that band), elsewhere interpolated
    from a COARSE_RESOLUTION grid of distances to surface samples (no less than the band)."""
    nodes, spacing = grid_nodes(resolution).float(), 2.0 / (resolution - 1)
    triangles = triangles.float()
    band = NEAR_CELLS * spacing
    to_index = lambda x: (x + 1.0) / spacing  # noqa: E731
    lo = to_index(triangles.amin(dim=1) - band).ceil().long().clamp(0, resolution - 1)
    hi = to_index(triangles.amax(dim=1) + band).floor().long().clamp(0, resolution - 1)
    near = torch.full((resolution ** 3,), math.inf)
    for part in _triangle_chunks(triangles, lo, hi):
        item, index = _box_pairs(lo[part], hi[part])
        tri = triangles[part][item]
        points = torch.stack([nodes[index[:, 0]], nodes[index[:, 1]], nodes[index[:, 2]]], dim=1)
        flat = (index[:, 0] * resolution + index[:, 1]) * resolution + index[:, 2]
        near.scatter_reduce_(0, flat, point_triangle_distance(points, tri[:, 0], tri[:, 1], tri[:, 2]), "amin")
    coarse_axis = grid_nodes(COARSE_RESOLUTION).float()
    coarse = torch.stack(torch.meshgrid(coarse_axis, coarse_axis, coarse_axis, indexing="ij"), -1).reshape(-1, 3)
    samples = surface_samples(triangles, spacing)
    far = torch.cat([torch.cdist(coarse, part).amin(1) for part in samples.split(1 << 14)]).view(-1, len(coarse))
    far = far.amin(0)
    far = F.interpolate(far.view(1, 1, *(COARSE_RESOLUTION,) * 3), size=(resolution,) * 3, mode="trilinear",
                        align_corners=True).flatten()
    return torch.where(near <= band, near, far.clamp(min=band)).view((resolution,) * 3)


def surface_samples(triangles: torch.Tensor, spacing: float, cap: int = 1 << 16) -> torch.Tensor:
    """About one point per spacing^2 of area (at most `cap`), uniform by area, plus the corners: for the
    distances far from the surface, where an error of about `spacing` does not matter."""
    a, b, c = triangles.unbind(1)
    area = 0.5 * torch.linalg.cross(b - a, c - a, dim=-1).norm(dim=-1)
    count = int(min(cap, max(1, float(area.sum()) / spacing ** 2)))
    generator = torch.Generator().manual_seed(0)
    pick = torch.multinomial(area + 1e-12, count, replacement=True, generator=generator)
    r1, r2 = torch.rand(2, count, 1, generator=generator)
    root = r1.sqrt()  # uniform on a triangle: (1 - sqrt r1) a + sqrt r1 (1 - r2) b + sqrt r1 r2 c
    points = (1 - root) * a[pick] + root * (1 - r2) * b[pick] + root * r2 * c[pick]
    return torch.cat([points, triangles.reshape(-1, 3)])


def _parity_inside(triangles: torch.Tensor, resolution: int) -> torch.Tensor:
    """Boolean [R, R, R] (x, y, z): odd number of mesh crossings along +z above the node. The columns are
    nudged off the grid by a tiny irrational offset, so no column runs exactly through an edge shared by
    two triangles (counted twice, the parity would flip)."""
    nodes, spacing = grid_nodes(resolution), 2.0 / (resolution - 1)
    nudge = torch.tensor([math.sqrt(2.0), math.sqrt(3.0)], dtype=torch.float64) * 1e-7
    xy = triangles[..., :2]
    lo = ((xy.amin(dim=1) - nudge + 1.0) / spacing).ceil().long().clamp(0, resolution - 1)
    hi = ((xy.amax(dim=1) - nudge + 1.0) / spacing).floor().long().clamp(0, resolution - 1)
    above = torch.zeros(resolution * resolution, resolution + 1, dtype=torch.int64)
    for part in _triangle_chunks(triangles, lo, hi):
        item, index = _box_pairs(lo[part], hi[part])
        tri = triangles[part][item]
        p = torch.stack([nodes[index[:, 0]], nodes[index[:, 1]]], dim=1) + nudge
        a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
        # 2D barycentric coordinates of the column in the triangle's projection
        e1, e2, q = b[:, :2] - a[:, :2], c[:, :2] - a[:, :2], p - a[:, :2]
        det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        safe = torch.where(det == 0, torch.ones_like(det), det)
        u = (q[:, 0] * e2[:, 1] - q[:, 1] * e2[:, 0]) / safe
        v = (e1[:, 0] * q[:, 1] - e1[:, 1] * q[:, 0]) / safe
        hit = (det != 0) & (u >= 0) & (v >= 0) & (u + v <= 1)
        z = (a[:, 2] + u * (b[:, 2] - a[:, 2]) + v * (c[:, 2] - a[:, 2]))[hit]
        column = (index[hit, 0] * resolution + index[hit, 1])
        below = torch.searchsorted(nodes, z)  # nodes strictly below the crossing: 0..below-1
        above.index_put_((column, below), torch.ones_like(below), accumulate=True)
    # crossings above node k = crossings whose `below` exceeds k: a suffix sum
    count = above.flip(1).cumsum(1).flip(1)[:, 1:]
    return (count % 2 == 1).view(resolution, resolution, resolution)


def mesh_sdf_grid(vertices, faces, resolution: int = GRID_RESOLUTION) -> torch.Tensor:
    """Signed distance [R, R, R] (negative inside, x-major: index [i, j, k] is node (x_i, y_j, z_k)) of a
    triangle mesh, vertices [V, 3] in the field's box, faces [F, 3]. Inside: ray parity along x, y and z,
    majority of the three, so one ray through a small hole or a crack does not flip a node."""
    triangles = torch.as_tensor(vertices, dtype=torch.float64)[torch.as_tensor(faces, dtype=torch.int64)]
    votes = torch.zeros((resolution,) * 3, dtype=torch.int64)
    for order in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):  # the ray axis last; the grid turned to match, and back
        inside = _parity_inside(triangles[..., list(order)], resolution)
        votes += inside.permute(*[order.index(axis) for axis in range(3)])
    distance = _unsigned_distance(triangles, resolution)
    return torch.where(votes >= 2, -distance, distance).float()


# ---------------------------------------------------------------------------------------------------
# The density bias and its use in the field


def shape_grid(sdf: torch.Tensor) -> torch.Tensor:
    """[4, R, R, R]: the signed distance and its gradient (central differences), sampled together."""
    spacing = 2.0 / (sdf.shape[0] - 1)
    return torch.stack([sdf, *torch.gradient(sdf, spacing=spacing)])


def bias_settings(level: float) -> torch.Tensor:
    """[level_raw, slope, floor, ceiling] of the start's density bias clamp(level_raw - slope sdf, floor,
    ceiling): density `level` on the mesh (softplus(level_raw) = level), 2 level inside from SHELL deep,
    below 1 from SHELL outside. A step this sharp is what the renders of a solid show: light runs out
    within a grid cell of the mesh, so the surface the export finds from the renders (backend/export/level.py)
    is the mesh, as the density level is."""
    softplus_inverse = lambda y: y + math.log(-math.expm1(-y)) if y < 20 else y  # noqa: E731
    level = max(level, MIN_LEVEL)
    level_raw = softplus_inverse(level)
    return torch.tensor([level_raw, level_raw / SHELL, -10.0, softplus_inverse(2.0 * level)])


# ---------------------------------------------------------------------------------------------------
# Setting the shape in a model, and the guide loss


def load_shape(path: str, fit_mode: str):
    """(vertices [V, 3], faces [F, 3], the Fit placing them) of the mesh file, placed in the field by
    `fit_mode`, simplified to MAX_GUIDE_FACES when larger (UserError, one sentence, for a missing or
    bad file)."""
    import numpy as np

    from .texture.mesh_input import fit, load_source_mesh

    mesh, placement = fit(load_source_mesh(path), fit_mode)
    vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    if len(faces) > MAX_GUIDE_FACES:
        import fast_simplification

        vertices, faces = fast_simplification.simplify(vertices.astype(np.float32), faces.astype(np.int32),
                                                       target_reduction=1.0 - MAX_GUIDE_FACES / len(faces))
    return np.asarray(vertices, np.float64), np.asarray(faces, np.int64), placement


def set_shape(model, sdf: torch.Tensor, level: float, placement=None) -> None:
    """Make the model's field start as the shape of the signed distance grid `sdf` [R, R, R], with
    density `level` on its surface; then fill the occupancy grid from the new density. `placement`
    (mesh_input.Fit) is kept with it, so the result can be put back where the mesh was (`placement_of`)."""
    field = model.field
    device = field.shape_grid.device
    field.shape_grid = shape_grid(sdf.float()).to(device)
    fit = [0.0, 0.0, 0.0, 1.0] if placement is None else [*placement.centre, placement.scale]
    field.shape_settings = torch.cat([bias_settings(level), torch.tensor(fit)]).to(device)
    initialize_occupancy(model)


def placement_of(model):
    """The mesh_input.Fit that placed a shape start's mesh in the field (from the field's buffers, so
    also from a checkpoint), or None for a blob start: `Fit.undo` maps field points back to the mesh's."""
    from .texture.mesh_input import Fit

    settings = model.field.shape_settings
    if settings.numel() < 8:
        return None
    cx, cy, cz, scale = settings[4:8].tolist()
    return Fit((cx, cy, cz), scale)


@torch.no_grad()
def initialize_occupancy(model) -> None:
    """Fill the occupancy grid with the largest density among each cell's 8 corners and centre (and the
    point nearest the origin that OccupancyGrid.initialize uses for the blob): a shape need not be
    densest towards the origin, so one point per cell could leave a thin part's cells empty."""
    grid = model.occupancy
    grid.initialize(model.field.density)
    r, device = grid.resolution, grid.density.device
    axis = torch.arange(r, device=device)
    lower = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3).float() * (2.0 / r) - 1.0
    offsets = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)] + [[0.5] * 3],
                           device=device) * (2.0 / r)
    for offset in offsets:
        seen = model.field.density((lower + offset).clamp(-1.0, 1.0)).view_as(grid.density)
        grid.density.copy_(torch.maximum(grid.density, seen))


def guide_strength(step: int, strength: float, decay_steps: int) -> float:
    """shape_strength, falling linearly to 0 at decay_steps (and 0 after)."""
    return strength * max(0.0, 1.0 - step / max(1, decay_steps))


def guide_loss(density: torch.Tensor, sdf: torch.Tensor, sigma: float) -> torch.Tensor:
    """Latent-NeRF's sketch-shape loss (Metzer et al. 2023, "Latent-NeRF for Shape-Guided Generation of
    3D Shapes and Textures", eq. 4), mean over points:
        L = CE(alpha_NeRF(p), alpha_GT(p)) * (1 - exp(-d^2 / (2 sigma_S^2)))
    alpha_NeRF = 1 - exp(-DELTA sigma); alpha_GT = 1 inside the mesh, else 0; d = |sdf|, the distance to
    the mesh surface: near it the loss is lenient. With alpha_GT clamped to [c, 1 - c] inside the log
    (c = 0.01, as in the authors' code), the CE is log((1-c)/c) |alpha - alpha_GT| + log(1/(1-c)); the
    constant is left out, so a field equal to the shape scores exactly 0. Inputs: the field's densities
    [N] and the mesh's sdf [N] at the same points."""
    target = (sdf < 0).to(density.dtype)
    weight = 1.0 - torch.exp(-sdf.to(density.dtype) ** 2 / (2.0 * sigma ** 2))
    mismatch = (1.0 - torch.exp(-DELTA * density) - target).abs()
    return math.log((1.0 - CE_CLAMP) / CE_CLAMP) * (weight * mismatch).mean()


@dataclass
class ShapeGuide:
    """The guide loss of one run; the mesh's signed distance is read from the field's own grid."""

    model: object
    strength: float
    decay_steps: int
    sigma: float

    def __call__(self, step: int, generator: torch.Generator) -> torch.Tensor | None:
        """The guide term of this step (already weighted), or None once it has decayed to 0."""
        weight = guide_strength(step, self.strength, self.decay_steps)
        if weight <= 0.0:
            return None
        field = self.model.field
        points = torch.rand(GUIDE_POINTS, 3, generator=generator).to(field.shape_grid.device, non_blocking=True)
        points = points * 2.0 - 1.0
        sdf = sample_grid(field.shape_grid[:1], points)[:, 0]
        return weight * guide_loss(field.density(points), sdf, self.sigma)


def mesh_sigma(sdf: torch.Tensor) -> float:
    """Latent-NeRF's sigma_S scaled to this mesh: SIGMA_PER_RADIUS of the inside's bounding radius."""
    nodes = grid_nodes(sdf.shape[0]).float()
    inside = torch.nonzero(sdf < 0)
    if len(inside) == 0:
        return SIGMA_PER_RADIUS * 0.5
    points = nodes[inside]
    centre = 0.5 * (points.amin(0) + points.amax(0))
    return SIGMA_PER_RADIUS * float((points - centre).norm(dim=1).max())


def start_level(config) -> float:
    """The start's surface density: the run's mesh_threshold when it gives one, else threestudio's 25."""
    from .export.extract import DEFAULT_THRESHOLD

    return DEFAULT_THRESHOLD if config.mesh_threshold is None else config.mesh_threshold


def prepare(model, config, fresh: bool) -> ShapeGuide | None:
    """For source "shape": on a fresh run, build the mesh's grid and start the field from it (a resumed
    run has it from its checkpoint). Returns the guide loss, or None (another source, or strength 0)."""
    if config.source != "shape":
        return None
    if fresh:
        vertices, faces, placement = load_shape(config.source_mesh, config.fit)
        set_shape(model, mesh_sdf_grid(vertices, faces), start_level(config), placement)
    if config.shape_strength <= 0:
        return None
    decay = config.steps if config.shape_decay_steps is None else config.shape_decay_steps
    return ShapeGuide(model, config.shape_strength, decay, mesh_sigma(model.field.shape_grid[0].cpu()))
