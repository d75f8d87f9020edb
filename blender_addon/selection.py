"""The artist's selection as the start of a job, and the result coming back onto it (docs/selection.md,
"In Blender"; docs/blender.md).

Going out (`read`): the active object's evaluated mesh (modifiers applied, in object space),
triangulated by Blender's loop triangles, its vertices turned into glTF's frame (frames.py), with its
active UV layer, if any, as one glTF (u, v) per triangle corner (glTF's v runs down the image:
v_gltf = 1 - v_blender). These are the buffers of shared/PROTOCOL.md "Sending a mesh".

Coming back:
- texture (`apply_texture`): a new material whose Base Color is the baked texture.png, on the object
  (its material slots switched to object-linked ones, so its mesh, and any other object sharing it,
  keep their materials) or on a duplicate. An object without a UV layer gets one from corner_uv.bin,
  written into the loops the triangles were made of. The geometry and transform are never touched.
- shape (`importer.import_glb(..., box=...)`): the new mesh fills the selection's bounding box in the
  selection's own transform, and the selection is hidden, as the Hunyuan3D-2 add-on does.
"""
from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from . import images
from .frames import blender_to_gltf
from .naming import datablock_name

SOURCES = [("NEW", "New object", "Make a new object from the prompt, on the 3D cursor"),
           ("TEXTURE_SELECTED", "Texture selected", "Paint the active mesh object from the prompt; its geometry "
                                                     "stays as it is"),
           ("SHAPE_FROM_SELECTED", "Shape from selected", "Start from the active mesh object's shape and grow "
                                                           "the prompt's object in its place")]
REQUEST_SOURCE = {"NEW": "new", "TEXTURE_SELECTED": "texture", "SHAPE_FROM_SELECTED": "shape"}
TEXTURE_TARGETS = [("OBJECT", "Object", "Give the selected object the textured material"),
                   ("DUPLICATE", "Duplicate", "Texture a duplicate of the selected object and hide the original")]
UV_NAME = "Distill3D UV"


class SelectionError(Exception):
    """The selection cannot be sent; the message is one sentence naming the problem and the fix."""


@dataclass
class Selection:
    object_name: str
    mesh: dict                 # Client.submit's mesh: vertices float32 [V,3] glTF, faces int32 [F,3], corner_uv
    loops: np.ndarray          # [3F] the evaluated mesh's loop under each triangle corner
    has_uv: bool
    matrix_world: list         # 4 x 4, row-major
    low: np.ndarray            # the evaluated mesh's bounding box, object space (Blender)
    high: np.ndarray
    world_bottom_centre: tuple[float, float, float]  # where a live mesh stands while the job runs
    world_size: float                                # and how large it is
    duplicate: bool = False    # texture a duplicate, not the object itself


def problem(obj) -> str:
    """Why `obj` (the active object) cannot be sent, or "" (cheap: for the panel's draw)."""
    if obj is None:
        return "No active object: click the mesh to use in the viewport, then Generate."
    if obj.type != "MESH":
        return (f"The active object \"{obj.name}\" is a {obj.type.lower()}, not a mesh: select a mesh object, or "
                "convert it (Object > Convert > Mesh).")
    if not len(obj.data.polygons):
        return f"\"{obj.name}\" is an empty mesh (no faces): select a mesh object that has faces."
    return ""


def read(context) -> Selection:
    """The active object's evaluated, triangulated mesh, ready to send. SelectionError if there is none."""
    obj = context.view_layer.objects.active
    text = problem(obj)
    if text:
        raise SelectionError(text)
    evaluated = obj.evaluated_get(context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        n_tris, n_verts = len(mesh.loop_triangles), len(mesh.vertices)
        if not n_tris:
            raise SelectionError(f"\"{obj.name}\" has no faces once its modifiers are applied: check its "
                                 "modifiers, or select a mesh object that has faces.")
        positions = _get(mesh.attributes["position"].data, "vector", np.float32, 3 * n_verts).reshape(-1, 3)
        loops = _get(mesh.loop_triangles, "loops", np.int32, 3 * n_tris)
        # Each corner's vertex through its loop: reading loop_triangles' "vertices" costs as much again.
        faces = _get(mesh.attributes[".corner_vert"].data, "value", np.int32, len(mesh.loops))[loops]
        uv_layer = mesh.uv_layers.active
        corner_uv = None
        has_uv = uv_layer is not None
        if has_uv:
            uv = _get(uv_layer.uv, "vector", np.float32, 2 * len(mesh.loops)).reshape(-1, 2)[loops]
            corner_uv = np.ascontiguousarray(np.column_stack([uv[:, 0], 1.0 - uv[:, 1]]), dtype="<f4")
    finally:
        evaluated.to_mesh_clear()
    low, high = positions.min(axis=0), positions.max(axis=0)
    bottom, size = _world_box(obj, low, high)
    sent = {"vertices": np.ascontiguousarray(blender_to_gltf(positions), dtype="<f4"),
            "faces": faces.astype("<i4").reshape(-1, 3)}
    if has_uv:
        sent["corner_uv"] = corner_uv
    return Selection(obj.name, sent, loops, has_uv, [list(row) for row in obj.matrix_world], low, high, bottom, size)


def _get(collection, attribute: str, dtype, count: int) -> np.ndarray:
    values = np.empty(count, dtype=dtype)
    collection.foreach_get(attribute, values)
    return values


def _world_box(obj, low: np.ndarray, high: np.ndarray) -> tuple[tuple[float, float, float], float]:
    """The bottom centre and the largest side of the object's box in the world (for the live mesh)."""
    corners = np.array([[x, y, z, 1.0] for x in (low[0], high[0]) for y in (low[1], high[1])
                        for z in (low[2], high[2])])
    world = (np.array(obj.matrix_world) @ corners.T).T[:, :3]
    w_low, w_high = world.min(axis=0), world.max(axis=0)
    centre = (w_low + w_high) / 2
    return (float(centre[0]), float(centre[1]), float(w_low[2])), float(max((w_high - w_low).max(), 1e-6))


# ----- the texture result ------------------------------------------------------------------------------

def apply_texture(selection: Selection, name: str, png: bytes, corner_uv: bytes | None,
                  duplicate: bool = False) -> bpy.types.Object:
    """Give the selected object (or a duplicate) a material whose Base Color is `png`. Its UV layer is
    used as it is; without one, a new layer takes `corner_uv` (float32 [3F, 2], glTF u/v per triangle
    corner in the order sent). Returns the textured object."""
    obj = bpy.data.objects.get(selection.object_name)
    if obj is None or obj.type != "MESH":
        raise SelectionError(f"the object \"{selection.object_name}\" is gone, so its texture has nowhere to go: "
                             "re-import the job's mesh.glb from the History")
    target = _duplicate(obj) if duplicate else obj
    uv_name = target.data.uv_layers.active.name if target.data.uv_layers.active is not None else ""
    if not uv_name:
        if corner_uv is None:
            raise SelectionError("the backend sent no UVs for an object without a UV layer: texture it again")
        target = _with_new_uv(target, selection, np.frombuffer(corner_uv, "<f4").reshape(-1, 2), duplicate)
        uv_name = UV_NAME
    image = images.new_image(datablock_name(f"{name} texture"), png)
    material = _textured_material(datablock_name(f"{name} (Distill3D)"), image, uv_name)
    if not target.material_slots:
        target.data.materials.append(material)
    for slot in target.material_slots:  # object-linked: the mesh's own materials stay as they were
        slot.link = "OBJECT"
        slot.material = material
    return target


def _duplicate(obj) -> bpy.types.Object:
    copy = obj.copy()
    copy.data = obj.data.copy()
    copy.name = datablock_name(obj.name, " (textured)")
    for collection in obj.users_collection:
        collection.objects.link(copy)
    obj.hide_set(True)
    obj.hide_render = True
    return copy


def _with_new_uv(obj, selection: Selection, corner_uv: np.ndarray, duplicate: bool):
    """Write the per-corner UVs into a new UV layer, in the loops the triangles were made of. That
    works when those are the object's own loops (no modifier changed the topology) and the layout gives
    a loop shared by two triangles of one polygon one UV (a chart seam along a quad's diagonal does
    not). Otherwise the textured result is a new object built from the very triangles that were sent,
    and the original is hidden."""
    mesh = obj.data
    mesh.calc_loop_triangles()
    own_loops = _get(mesh.loop_triangles, "loops", np.int32, 3 * len(mesh.loop_triangles))
    uv = np.column_stack([corner_uv[:, 0], 1.0 - corner_uv[:, 1]]).astype(np.float32)
    per_loop = np.zeros((len(mesh.loops), 2), np.float32)
    same = len(own_loops) == len(selection.loops) and np.array_equal(own_loops, selection.loops)
    if same:
        per_loop[own_loops] = uv
        same = np.abs(per_loop[own_loops] - uv).max() <= 1e-6  # every shared loop took one UV
    if not same:
        if duplicate:  # the copy made for this is not needed: the sent triangles make the new object
            bpy.data.objects.remove(obj)
        return _object_from_sent_triangles(selection, uv)
    layer = mesh.uv_layers.new(name=UV_NAME)
    layer.uv.foreach_set("vector", per_loop.ravel())
    mesh.uv_layers.active = layer
    return obj


def _object_from_sent_triangles(selection: Selection, uv: np.ndarray) -> bpy.types.Object:
    original = bpy.data.objects[selection.object_name]
    from .frames import gltf_to_blender

    vertices = gltf_to_blender(selection.mesh["vertices"])
    faces = np.asarray(selection.mesh["faces"]).reshape(-1, 3)
    mesh = bpy.data.meshes.new(datablock_name(original.name, " (textured)"))
    mesh.from_pydata(vertices.tolist(), [], faces.tolist())
    layer = mesh.uv_layers.new(name=UV_NAME)
    layer.uv.foreach_set("vector", uv.ravel())  # from_pydata makes the loops in triangle-corner order
    mesh.update()
    obj = bpy.data.objects.new(mesh.name, mesh)
    obj.matrix_world = original.matrix_world.copy()
    for collection in original.users_collection:
        collection.objects.link(obj)
    original.hide_set(True)
    original.hide_render = True
    return obj


def _textured_material(name: str, image, uv_name: str) -> bpy.types.Material:
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # from 5.0 on materials always use nodes (use_nodes is deprecated)
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    texture.location = (bsdf.location[0] - 320, bsdf.location[1])
    uv_map = nodes.new("ShaderNodeUVMap")
    uv_map.uv_map = uv_name
    uv_map.location = (texture.location[0] - 220, texture.location[1])
    links.new(uv_map.outputs["UV"], texture.inputs["Vector"])
    links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
    return material


def hide(object_name: str) -> None:
    """Hide the selection a shape result replaces (viewport and render; Alt+H shows it again)."""
    obj = bpy.data.objects.get(object_name)
    if obj is not None:
        obj.hide_set(True)
        obj.hide_render = True
