"""Pictures for people: PNG writing and labelled grids (previews, turntables, comparisons)."""
from __future__ import annotations

import io

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .fileio import write_atomic


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[H, W, 3] or [3, H, W] floats in [0, 1] (or uint8) -> [H, W, 3] uint8."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def png_bytes(image: torch.Tensor | np.ndarray, compress_level: int = 6) -> bytes:
    """An image ([H, W, C] in 0..1 or uint8) as PNG bytes. compress_level 1 for the many short-lived
    previews the server streams, PIL's default 6 for files that stay."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def save_png(image: torch.Tensor | np.ndarray, path: Path) -> Path:
    """Write a PNG atomically, so a reader never sees half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, png_bytes(image))


def grid(images: Sequence[torch.Tensor | np.ndarray], labels: Sequence[str] | None = None, columns: int | None = None,
         scale: int = 1) -> np.ndarray:
    """Tile same-sized images into a grid, each with an optional label strip above it."""
    tiles = [to_uint8(im) for im in images]
    h, w = tiles[0].shape[:2]
    columns = columns or len(tiles)
    rows = (len(tiles) + columns - 1) // columns
    label_h = 14 if labels else 0
    canvas = Image.new("RGB", (columns * w * scale, rows * (h * scale + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        x, y = c * w * scale, r * (h * scale + label_h)
        canvas.paste(Image.fromarray(tile).resize((w * scale, h * scale), Image.NEAREST), (x, y + label_h))
        if labels:
            draw.text((x + 2, y + 1), labels[i], fill="black")
    return np.asarray(canvas)
