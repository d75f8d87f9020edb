"""The live preview: PNG bytes from the backend into an image datablock, without temp files.

The PNG is packed into the image and Blender decodes it lazily (in C) when the image is next drawn
or read, so an update costs well under a millisecond on the main thread. The image is kept (fake
user) after the job, so the preview stays with the .blend file.
"""
from __future__ import annotations

import bpy

from .naming import datablock_name


def image_name(prompt: str, suffix: str = "") -> str:
    return datablock_name(f"Distill3D preview: {prompt}", suffix)


def thumbnail_name(job_id: str) -> str:
    """The image holding the preview of a history job that did not run in this Blender session."""
    return f"Distill3D thumbnail {job_id}"


def show_png(name: str, png: bytes, keep: bool = True) -> bpy.types.Image:
    """Put `png` into the image `name` (created on first use) and refresh its panel icon. `keep`:
    saved with the .blend file (a fake user) rather than dropped when nothing uses it."""
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.new(name, 8, 8)
        image.use_fake_user = keep
    image.pack(data=png, data_len=len(png))
    if image.source != "FILE":
        image.source = "FILE"  # from now on the pixels come from the packed PNG
    image.buffers_free()  # decode the new PNG on next use
    image.preview_ensure().reload()  # here, not in the panel's draw, where data must not change
    return image


def new_image(name: str, png: bytes) -> bpy.types.Image:
    """A new image holding `png`, packed (saved with the .blend); Blender adds .001 etc. to a name in use,
    so an earlier result's image is never overwritten."""
    image = bpy.data.images.new(name, 8, 8)
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    return image


def icon_id(name: str) -> int:
    """The icon of image `name` for `layout.template_icon` (0 while there is none)."""
    image = bpy.data.images.get(name) if name else None
    return image.preview.icon_id if image is not None and image.preview is not None else 0
