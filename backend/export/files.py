"""The asset on disk: mesh.glb (PBR material, base-color texture embedded) and mesh.obj + mesh.mtl +
texture.png, both in glTF's frame: +Y up, the asset's front toward +Z (the caller converts with
frames.to_gltf; docs/frames.md). Blender's glTF importer, and its OBJ importer with its defaults
(forward -Z, up Y), put the front toward -Y, which is Blender's front view.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from shared import results

from ..fileio import write_atomic
from ..pictures import png_bytes

# The file names clients fetch (shared/results.py).
GLB, OBJ, MTL = results.MESH, results.OBJ, results.MTL
TEXTURE, NORMAL_TEXTURE = results.TEXTURE, results.NORMAL_TEXTURE
MATERIAL = "albedo"
HEADER = "Distill3D mesh: +Y up, front toward +Z"


@dataclass
class Asset:
    """What gets written, already in glTF's frame. Either uv + texture, or colors."""
    vertices: np.ndarray              # [V, 3] float
    faces: np.ndarray                 # [F, 3] int, counter-clockwise seen from outside
    normals: np.ndarray               # [V, 3] unit
    uv: np.ndarray | None = None      # [V, 2]: u across, v down the texture (glTF's convention)
    texture: np.ndarray | None = None  # [S, S, 3] uint8, row 0 at v = 0
    colors: np.ndarray | None = None  # [V, 3] uint8, when there is no texture
    normal_texture: np.ndarray | None = None  # [S, S, 3] uint8 tangent-space normal map, same UVs as texture
    tangents: np.ndarray | None = None        # [V, 4]: unit xyz, w = +-1 (with normal_texture)


def write_asset(asset: Asset, out_dir: Path) -> dict[str, Path]:
    """Write every file; returns name -> path. Each file appears whole or not at all."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {GLB: out_dir / GLB, OBJ: out_dir / OBJ}
    write_atomic(paths[GLB], glb_bytes(asset))
    write_atomic(paths[OBJ], obj_text(asset).encode())
    if asset.texture is not None:
        paths[MTL], paths[TEXTURE] = out_dir / MTL, out_dir / TEXTURE
        write_atomic(paths[MTL], mtl_text(asset.normal_texture is not None).encode())
        write_atomic(paths[TEXTURE], png_bytes(asset.texture))
    if asset.normal_texture is not None:
        paths[NORMAL_TEXTURE] = out_dir / NORMAL_TEXTURE
        write_atomic(paths[NORMAL_TEXTURE], png_bytes(asset.normal_texture))
    return paths


def glb_bytes(asset: Asset) -> bytes:
    """A binary glTF by trimesh: one mesh with one metallic-roughness material (metallic 0, since
    glTF's default metallic 1 would render the albedo nearly black), or with COLOR_0 vertex colors
    and no material, which Blender's importer wires into a default material's base color."""
    if asset.texture is not None:
        normal = None if asset.normal_texture is None else Image.fromarray(asset.normal_texture)
        material = trimesh.visual.material.PBRMaterial(
            name=MATERIAL, baseColorTexture=Image.fromarray(asset.texture), metallicFactor=0.0,
            roughnessFactor=1.0, normalTexture=normal)
    else:
        material = None
    glb = _trimesh(asset, material).export(file_type="glb", include_normals=True)
    return glb if asset.tangents is None else with_tangents(glb, asset.tangents)


def with_tangents(glb: bytes, tangents: np.ndarray) -> bytes:
    """The GLB with a TANGENT attribute (float VEC4) on its one primitive, which trimesh does not
    write: the data is appended to the binary chunk as a new buffer view and accessor. glTF asks for
    tangents with a normalTexture, else viewers each compute their own (glTF 2.0, meshes)."""
    json_length = struct.unpack_from("<I", glb, 12)[0]
    document = json.loads(glb[20:20 + json_length])
    bin_length = struct.unpack_from("<I", glb, 20 + json_length)[0]
    binary = bytearray(glb[28 + json_length:28 + json_length + bin_length])   # 4-byte aligned already
    data = np.ascontiguousarray(tangents, dtype="<f4").tobytes()
    document["bufferViews"].append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(data),
                                    "target": 34962})  # ARRAY_BUFFER
    document["accessors"].append({"bufferView": len(document["bufferViews"]) - 1, "componentType": 5126,
                                  "count": len(tangents), "type": "VEC4"})
    (primitive,) = [p for m in document["meshes"] for p in m["primitives"]]
    primitive["attributes"]["TANGENT"] = len(document["accessors"]) - 1
    binary += data
    document["buffers"][0]["byteLength"] = len(binary)
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)                    # chunks are 4-byte aligned: JSON pads with spaces
    binary += b"\0" * (-len(binary) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(binary), b"BIN\0") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def obj_text(asset: Asset) -> str:
    """Wavefront OBJ text, written by trimesh: positions, v-up UVs, the given normals, and faces
    "f v/vt/vn" (one index for all three, as the GLB shares them). With a texture it names mesh.mtl
    and its material; without one (the vertex-color fallback) the colors follow each position
    ("v x y z r g b"), which Blender's and trimesh's importers read as a color attribute.

    The material here carries no image on purpose: trimesh would encode the texture a second time and
    write its own MTL, which names the image after the material (albedo.png, not texture.png) and
    drops the normal map, so mesh.mtl is mtl_text's."""
    material = None if asset.texture is None else trimesh.visual.material.SimpleMaterial(name=MATERIAL)
    return trimesh.exchange.obj.export_obj(_trimesh(asset, material), include_normals=True, digits=6,
                                           mtl_name=MTL, header=HEADER)


def _trimesh(asset: Asset, material) -> trimesh.Trimesh:
    """The asset as one trimesh mesh, unprocessed (no merged vertices): with UVs and `material`, or
    with vertex colors when the asset has no texture."""
    if asset.texture is not None:
        # trimesh keeps UVs with v up (OBJ's convention) and flips them when it writes glTF
        visual = trimesh.visual.TextureVisuals(uv=_v_up(asset.uv), material=material)
    else:
        visual = trimesh.visual.ColorVisuals(vertex_colors=asset.colors)
    return trimesh.Trimesh(asset.vertices, asset.faces, vertex_normals=asset.normals, visual=visual, process=False)


def mtl_text(normal_map: bool = False) -> str:
    """The OBJ's material: white diffuse, modulated by texture.png; with a normal map, `map_Bump`
    names texture_normal.png, which Blender's OBJ importer wires into a Normal Map node (as its OBJ
    exporter writes normal maps)."""
    bump = f"map_Bump {NORMAL_TEXTURE}\n" if normal_map else ""
    return f"newmtl {MATERIAL}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {TEXTURE}\n{bump}"


def _v_up(uv: np.ndarray) -> np.ndarray:
    """glTF UVs (v down the image) -> OBJ / trimesh UVs (v up the image)."""
    return np.column_stack([uv[:, 0], 1.0 - uv[:, 1]])


