"""The live coarse mesh: a rough object in the viewport that takes shape while the backend trains.

Each "mesh" event (shared/PROTOCOL.md) carries little-endian buffers: vertices float32 [V, 3] in
glTF's frame like every mesh from the backend (frames.py turns them into Blender's), faces int32
[F, 3], colors uint8 sRGB [V, 3]. The vertices are fitted to the panel's size and stood on the cursor
by the same rule as the final import (placement.py), then go straight into the mesh with
`foreach_set` (no Python loop per vertex), replacing the previous geometry. The proxy is removed
when the final mesh is imported in its place.
"""
from __future__ import annotations

import bpy
import numpy as np

from . import placement
from .frames import gltf_to_blender
from .naming import datablock_name

COLLECTION = "Distill3D"
MATERIAL = "Distill3D live mesh"
COLOR = "Color"


def proxy_name(prompt: str, suffix: str = "") -> str:
    return datablock_name(f"{prompt} (training)", suffix)


def collection() -> bpy.types.Collection:
    """The collection holding the live meshes, linked to the scene on first use."""
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None:
        coll = bpy.data.collections.new(COLLECTION)
    scene = bpy.context.scene
    if coll.name not in scene.collection.children:
        scene.collection.children.link(coll)
    return coll


def show_mesh(name: str, event: dict, location, size: float) -> bpy.types.Object:
    """Create or update the proxy object `name` from a mesh event: `size` across, standing on `location`."""
    n_vertices, n_faces = int(event["vertex_count"]), int(event["face_count"])
    vertices = np.frombuffer(event["vertices"], dtype="<f4", count=3 * n_vertices)
    vertices = placement.fitted(gltf_to_blender(vertices), size).ravel()
    faces = np.frombuffer(event["faces"], dtype="<i4", count=3 * n_faces)
    colors = np.frombuffer(event["colors"], dtype=np.uint8, count=3 * n_vertices).reshape(-1, 3)

    mesh = bpy.data.meshes.get(name) or bpy.data.meshes.new(name)
    mesh.clear_geometry()
    mesh.vertices.add(n_vertices)
    mesh.loops.add(3 * n_faces)
    mesh.polygons.add(n_faces)
    # The generic attributes take the buffers faster than vertices.co / loops.vertex_index (docs/quality.md).
    mesh.attributes["position"].data.foreach_set("vector", vertices)
    mesh.attributes[".corner_vert"].data.foreach_set("value", faces)
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * n_faces, 3, dtype=np.int32))
    if n_vertices:
        rgba = np.ones((n_vertices, 4), dtype=np.float32)
        rgba[:, :3] = colors / 255.0
        attribute = mesh.color_attributes.get(COLOR) or mesh.color_attributes.new(COLOR, "BYTE_COLOR", "POINT")
        attribute.data.foreach_set("color_srgb", rgba.ravel())
        mesh.color_attributes.active_color = attribute
    mesh.update()
    if not mesh.materials:
        mesh.materials.append(_vertex_color_material())

    obj = bpy.data.objects.get(name)
    if obj is None:
        obj = bpy.data.objects.new(name, mesh)
        collection().objects.link(obj)
    obj.location = location
    return obj


def remove(name: str) -> None:
    obj = bpy.data.objects.get(name) if name else None
    if obj is not None:
        mesh = obj.data
        bpy.data.objects.remove(obj)
        if mesh is not None and mesh.users == 0:
            bpy.data.meshes.remove(mesh)


def _vertex_color_material() -> bpy.types.Material:
    """One shared material that shows the proxy's vertex colors in Material Preview and renders."""
    material = bpy.data.materials.get(MATERIAL)
    if material is not None:
        return material
    material = bpy.data.materials.new(MATERIAL)
    if bpy.app.version < (5, 0, 0):  # from 5.0 on materials always use nodes (use_nodes is deprecated)
        material.use_nodes = True
    nodes = material.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    attribute = nodes.new("ShaderNodeVertexColor")
    attribute.layer_name = COLOR
    material.node_tree.links.new(attribute.outputs["Color"], bsdf.inputs["Base Color"])
    return material
