"""UVs and texture: an xatlas atlas, then a CPU bake of the field's albedo into it (no nvdiffrast).

Bake: each UV triangle is scan-converted into the texture; a texel centre's barycentrics in its
UV triangle give the surface point and normal whose seen albedo (`seen_albedo`) it stores. Empty
texels next to charts are then filled from their neighbours (dilation, then pull-push), so bilinear
filtering and mipmaps never pull in black.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import xatlas

from ..nerf.renderer import accumulate, weights
from .extract import DEFAULT_CHUNK, field_device, query
from .raster import rasterize_triangles

logger = logging.getLogger(__name__)

CHART_FACES = 1500
SEEN_DEPTH = 0.08    # world units the bake looks into the surface, along -normal
SEEN_SAMPLES = 16


def seen_albedo(field):
    """fn([N, 6] surface points and unit outward normals) -> [N, 3]: the albedo a camera looking
    straight at the surface sees, i.e. the field's albedo composited with volume-rendering weights
    along a ray entering at the point, SEEN_DEPTH deep. A density field's surface is soft and the
    mesh's isosurface lies at its outer edge, where the albedo is barely seen and drifts: baked at
    the isosurface the texture is off by several times more than a little inside (docs/export.md,
    "Texture"; the figures: docs/quality.md, "Figures behind design choices")."""
    def fn(batch: torch.Tensor) -> torch.Tensor:
        n, step = len(batch), SEEN_DEPTH / SEEN_SAMPLES
        depth = (torch.arange(SEEN_SAMPLES, device=batch.device) + 0.5) * step
        samples = (batch[:, None, :3] - depth[None, :, None] * batch[:, None, 3:]).reshape(-1, 3)
        ray = torch.arange(n, device=batch.device).repeat_interleave(SEEN_SAMPLES)  # one ray per point
        w = weights(field.density(samples), step, ray, n)[:, None]                  # the renderer's weights
        albedo = field.albedo(samples)
        total = accumulate(w, ray, n)
        seen = accumulate(w * albedo, ray, n) / total.clamp(min=1e-6)
        return torch.where(total > 1e-3, seen, albedo[::SEEN_SAMPLES])  # nothing seen: the albedo at the surface
    return fn


def query_seen_albedo(field, points: np.ndarray, normals: np.ndarray, chunk: int) -> np.ndarray:
    """seen_albedo at points [N, 3] with normals [N, 3] (any length), as numpy float32 [N, 3]."""
    normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return query(seen_albedo(field), np.concatenate([points, normals], axis=1), field_device(field),
                 max(1, chunk // SEEN_SAMPLES))


@dataclass
class UVAtlas:
    vertex_map: np.ndarray  # [V'] index of each split vertex in the welded mesh
    faces: np.ndarray       # [F, 3] into the split vertices
    uv: np.ndarray          # [V', 2] in [0, 1]: u across the image, v down it (glTF's convention)
    charts: int             # how many pieces the surface was cut into (each boundary is a seam)


def unwrap(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, texture_size: int,
           padding: int = 4) -> UVAtlas | None:
    """Charts and packing by xatlas into one texture_size^2 atlas; None (with a warning) on failure.
    xatlas only approximates the requested resolution (its atlas often comes out larger, docs/quality.md
    "Figures behind design choices", and is then scaled into the texture), so `padding` is twice the 2 texels that bilinear filtering needs."""
    try:
        atlas = xatlas.Atlas()
        atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32), normals.astype(np.float32))
        pack = xatlas.PackOptions()
        pack.resolution = int(texture_size)
        pack.padding = int(padding)      # texels between charts, so bilinear lookups stay in-chart
        pack.bilinear = True
        charts = xatlas.ChartOptions()
        # xatlas's chart growing, the export's slowest stage, grows faster than linearly with chart
        # size. Charts of at most ~CHART_FACES faces (as an area) trade a little texture fill for
        # much less time (docs/quality.md, "Figures behind design choices"); small meshes are left alone.
        charts.max_chart_area = _area(vertices, faces) * CHART_FACES / len(faces)
        atlas.generate(charts, pack)
        if atlas.atlas_count != 1:
            raise RuntimeError(f"xatlas made {atlas.atlas_count} atlases instead of one")
        vertex_map, new_faces, uv = atlas[0]
    except Exception as error:  # xatlas raises plain RuntimeErrors; any failure means "no UVs"
        logger.warning("UV unwrapping failed (%s); exporting vertex colors instead of a texture", error)
        return None
    uv_area = _area(uv, new_faces)
    if len(new_faces) != len(faces) or not np.isfinite(uv).all() or uv_area <= 0.0:
        logger.warning("UV unwrapping gave an unusable atlas (%d faces, UV area %.3g); exporting vertex "
                       "colors instead of a texture", len(new_faces), uv_area)
        return None
    return UVAtlas(vertex_map.astype(np.int64), new_faces.astype(np.int64), uv.astype(np.float64),
                   int(atlas.chart_count))


def _area(points: np.ndarray, faces: np.ndarray) -> float:
    """Total area of triangles in 2D or 3D."""
    if points.shape[1] == 2:
        points = np.column_stack([points, np.zeros(len(points))])
    t = points[faces]
    return float(np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).sum() / 2.0)


def bake_albedo(field, positions: np.ndarray, normals: np.ndarray, faces: np.ndarray, uv: np.ndarray,
                texture_size: int, chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, float]:
    """The field's seen albedo baked into a texture: uint8 [S, S, 3] (row 0 = v 0) and the fraction
    of texels covered by charts (before dilation). Normals are per vertex, interpolated per texel."""
    size = int(texture_size)
    x, y, ids, bary = rasterize_triangles(uv[faces] * size, size, size)
    texel, first = np.unique(y * size + x, return_index=True)   # a texel on a shared edge: bake once
    corners = faces[ids[first]]
    points = np.einsum("nk,nkd->nd", bary[first], positions[corners])
    colors = query_seen_albedo(field, points, np.einsum("nk,nkd->nd", bary[first], normals[corners]), chunk)
    return texel_image(texel, colors, size)


def texel_image(texel: np.ndarray, colors: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Colours [N, 3] in 0..1 at flat texel indices -> (uint8 [size, size, 3] with the empty texels
    dilated, the fraction of texels given a colour)."""
    image = np.zeros((size * size, 3), np.float32)
    image[texel] = np.clip(colors, 0.0, 1.0)
    filled = np.zeros(size * size, bool)
    filled[texel] = True
    image = dilate(image.reshape(size, size, 3), filled.reshape(size, size))
    return np.round(image * 255.0).astype(np.uint8), len(texel) / float(size * size)


def dilate(image: np.ndarray, filled: np.ndarray, rings: int = 2) -> np.ndarray:
    """Fill every empty texel: the first `rings` rings around the charts get the mean of their filled
    8-neighbours (what bilinear filtering at a chart's edge reads), the rest a pull-push fill
    (Gortler et al. 1996) from the nearest charts (what coarse mipmaps read)."""
    image, filled = image.copy(), filled.copy()
    if not filled.any():
        return image
    h, w = filled.shape
    for _ in range(rings):
        if filled.all():
            break
        weight = np.pad(filled, 1).astype(np.float32)
        color = np.pad(image * filled[..., None], ((1, 1), (1, 1), (0, 0)))
        total, count = np.zeros_like(image), np.zeros(filled.shape, np.float32)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                total += color[dy:dy + h, dx:dx + w]
                count += weight[dy:dy + h, dx:dx + w]
        grow = ~filled & (count > 0)
        image[grow] = total[grow] / count[grow, None]
        filled |= grow
    return _pull_push(image, filled)


def _pull_push(image: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Empty texels take the average of the filled texels of their 2x2 block, recursively coarser."""
    if filled.all():
        return image
    h, w = filled.shape
    ph, pw = h + h % 2, w + w % 2
    color = np.zeros((ph, pw, 3), np.float32)
    weight = np.zeros((ph, pw), np.float32)
    color[:h, :w] = image * filled[..., None]
    weight[:h, :w] = filled
    color = color.reshape(ph // 2, 2, pw // 2, 2, 3).sum(axis=(1, 3))
    weight = weight.reshape(ph // 2, 2, pw // 2, 2).sum(axis=(1, 3))
    coarse = _pull_push(color / np.maximum(weight, 1.0)[..., None], weight > 0)
    up = coarse.repeat(2, axis=0).repeat(2, axis=1)[:h, :w]
    out = image.copy()
    out[~filled] = up[~filled]
    return out


def vertex_colors(field, vertices: np.ndarray, chunk: int = DEFAULT_CHUNK,
                  normals: np.ndarray | None = None) -> np.ndarray:
    """The field's albedo at each vertex as uint8 RGB [V, 3]: the colors when there is no texture.
    With normals, the seen albedo (as the texture bake); without (the live preview mesh), at the vertex."""
    if normals is not None:
        colors = query_seen_albedo(field, vertices, normals, chunk)
    else:
        colors = query(field.albedo, vertices, field_device(field), chunk)
    return np.round(np.clip(colors, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(-1, 3)
