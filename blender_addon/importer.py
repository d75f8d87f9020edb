"""A finished job's mesh.glb into the scene: imported with Blender's own glTF importer (which wires
the material and its baked texture), then made to sit right (placement.py): `size` metres across with
the scale applied, origin at the bottom centre on the given location, named after the prompt, in the
Distill3D collection, selected and active.

Blender-facing code only; the file format is the glTF importer's business (as in Blender's bundled
glTF add-on, format code and scene code stay apart).
"""
from __future__ import annotations

import contextlib
import os
import tempfile

import bpy
import numpy as np
from mathutils import Matrix, Vector

from . import placement
from .proxy import collection


class ImportFailed(Exception):
    """The mesh could not be imported; the message says why and what to do."""


def import_glb(data: bytes, name: str, location, size: float, box=None) -> list[bpy.types.Object]:
    """Import GLB bytes; returns the new mesh objects (the first one is the main mesh, now active).
    `box` (matrix_world, low, high), for a shape grown from a selection: the mesh fills the box low..high
    (object space) under that transform (placement.boxed) instead of standing `size` across on `location`."""
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
    meshes = [obj for obj in new if obj.type == "MESH" and len(obj.data.vertices)]
    if "FINISHED" not in result or not meshes:
        for obj in new:
            bpy.data.objects.remove(obj)
        raise ImportFailed("the backend's mesh.glb holds no mesh: the run produced an empty surface; "
                           "try more steps or another seed")
    _bake_transforms(meshes)
    for obj in new:
        if obj not in meshes:  # the importer's empties (node hierarchy): nothing hangs on them now
            bpy.data.objects.remove(obj)
    if box is None:
        _fit(meshes, location, size)
    else:
        _fit_box(meshes, *box)
    main = meshes[0]
    main.name = name
    main.data.name = name
    _move_to(meshes, collection())
    _select(meshes, main)
    return meshes


def _bake_transforms(objects) -> None:
    """Apply each object's world transform to its mesh data (scale applied, no parents)."""
    for obj in objects:
        world = obj.matrix_world.copy()
        obj.parent = None
        obj.data.transform(world)
        obj.matrix_world = Matrix.Identity(4)


def _fit(objects, location, size: float) -> None:
    points = np.concatenate([_positions(obj.data) for obj in objects])
    scale, bottom_centre = placement.fit(points, size)
    matrix = Matrix.Scale(scale, 4) @ Matrix.Translation(-Vector(bottom_centre))
    for obj in objects:
        obj.data.transform(matrix)
        obj.data.update()
        obj.location = Vector(location)


def _fit_box(objects, matrix_world, low, high) -> None:
    counts = [len(obj.data.vertices) for obj in objects]
    points = placement.boxed(np.concatenate([_positions(obj.data) for obj in objects]), low, high)
    for obj, part in zip(objects, np.split(points, np.cumsum(counts)[:-1])):
        obj.data.vertices.foreach_set("co", part.ravel())
        obj.data.update()
        obj.matrix_world = Matrix(matrix_world)


def _positions(mesh) -> np.ndarray:
    points = np.empty(3 * len(mesh.vertices), dtype=np.float32)
    mesh.vertices.foreach_get("co", points)
    return points.reshape(-1, 3)


def _move_to(objects, target) -> None:
    for obj in objects:
        for coll in list(obj.users_collection):
            if coll != target:
                coll.objects.unlink(obj)
        if obj.name not in target.objects:
            target.objects.link(obj)


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
