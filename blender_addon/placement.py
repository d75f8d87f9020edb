"""Where a generated object goes and how big it is: plain numbers, no Blender data.

The backend's objects live in a [-1, 1] cube of no particular unit. In the scene an object gets a
real-world size (`size` metres across its largest bounding-box side, the panel's Size), its origin
at the bottom centre of its bounding box, and that origin on the 3D cursor: it stands on the
cursor instead of sinking half into the floor. Variations stand in a row along +X. The live mesh
and the imported result are fitted by the same rule, so the final mesh takes the proxy's place.
"""
from __future__ import annotations

import numpy as np

ROW_GAP = 0.5  # between variations, as a fraction of the size


def fit(points: np.ndarray, size: float) -> tuple[float, np.ndarray]:
    """(scale, bottom centre) so that `(p - bottom_centre) * scale` is `size` across its largest side
    with its bottom centre at the origin. An empty or flat-as-a-point set keeps scale 1."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not len(points):
        return 1.0, np.zeros(3)
    low, high = points.min(axis=0), points.max(axis=0)
    extent = float((high - low).max())
    bottom_centre = np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]])
    return (size / extent if extent > 0 else 1.0), bottom_centre


def fitted(points: np.ndarray, size: float) -> np.ndarray:
    """`points` scaled and moved by `fit`."""
    scale, bottom_centre = fit(points, size)
    return ((np.asarray(points, dtype=np.float64).reshape(-1, 3) - bottom_centre) * scale).astype(np.float32)


def slot_location(origin, slot: int, size: float) -> tuple[float, float, float]:
    """Where variation `slot` stands: the first on `origin`, the next ones along +X."""
    x, y, z = (float(c) for c in origin)
    return (x + slot * size * (1.0 + ROW_GAP), y, z)


def boxed(points: np.ndarray, low, high) -> np.ndarray:
    """`points` moved and uniformly scaled so their bounding box has the centre of the box low..high
    and its largest side: a shape result filling the selection it grew from (docs/selection.md). The
    backend's `fit auto` centres and scales uniformly, so this undoes it whether or not the result
    was scaled back already."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if not len(points):
        return points.astype(np.float32)
    p_low, p_high = points.min(axis=0), points.max(axis=0)
    extent = float((p_high - p_low).max())
    scale = float((high - low).max()) / extent if extent > 0 else 1.0
    return ((points - (p_low + p_high) / 2) * scale + (low + high) / 2).astype(np.float32)
