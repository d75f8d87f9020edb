"""A finished job's mesh.glb into the scene: imported with Blender's own glTF importer (which wires
the material and its baked texture), named after the prompt, placed at the 3D cursor (variations side
by side along X), and selected.

Blender-facing code only; the file format is the glTF importer's business (as in Blender's bundled
glTF add-on, format code and scene code stay apart).
"""
from __future__ import annotations

import contextlib
import os
import tempfile

import bpy
from mathutils import Vector

SPACING = 2.5  # the backend's objects fit in [-1, 1]^3: this leaves a gap between variations


class ImportFailed(Exception):
    """The mesh could not be imported; the message says why and what to do."""


def placement(origin, slot: int) -> Vector:
    return Vector(origin) + Vector((SPACING * slot, 0.0, 0.0))


def import_glb(data: bytes, name: str, location) -> list[bpy.types.Object]:
    """Import GLB bytes; returns the new objects (the first one is the main mesh, now active)."""
    if not hasattr(bpy.ops.import_scene, "gltf"):
        raise ImportFailed("Blender's glTF importer is off: enable \"Import-Export: glTF 2.0 format\" in "
                           "Preferences > Add-ons")
    before = set(bpy.data.objects)
    fd, path = tempfile.mkstemp(suffix=".glb", prefix="distill3d-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        with _context():
            result = bpy.ops.import_scene.gltf(filepath=path)
    except RuntimeError as error:
        raise ImportFailed(f"the glTF importer refused the mesh ({error}): re-import it from the job history, "
                           "or open the job's mesh.glb from the backend's data folder") from None
    finally:
        os.unlink(path)  # the importer packs the embedded texture, so the file is not needed after
    new = [obj for obj in bpy.data.objects if obj not in before]
    if "FINISHED" not in result or not any(obj.type == "MESH" for obj in new):
        raise ImportFailed("the backend's mesh.glb holds no mesh: the run produced an empty surface; "
                           "try more steps or another seed")
    new.sort(key=lambda obj: obj.type != "MESH")  # the mesh first
    main = new[0]
    main.name = name
    main.data.name = name
    for obj in new:
        if obj.parent not in new:  # roots carry the placement; children follow
            obj.location = Vector(location) + obj.location
    _select(new, main)
    return new


def _select(objects, active) -> None:
    view_layer = bpy.context.view_layer
    for obj in view_layer.objects:
        if obj.select_get():
            obj.select_set(False)
    for obj in objects:
        if obj.name in view_layer.objects:
            obj.select_set(True)
    view_layer.objects.active = active


def _context():
    """Operators run from a timer have no window in their context; give them the first one."""
    window = next(iter(bpy.context.window_manager.windows), None) if bpy.context.window is None else None
    return bpy.context.temp_override(window=window) if window is not None else contextlib.nullcontext()
