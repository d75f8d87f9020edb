"""The asset on disk: mesh.glb (PBR material, base-color texture embedded) and mesh.obj + mesh.mtl +
texture.png, both in glTF's frame: +Y up, the asset's front toward +Z (the caller converts with
frames.to_gltf; docs/frames.md). Blender's glTF importer, and its OBJ importer with its defaults
(forward -Z, up Y), put the front toward -Y, which is Blender's front view.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from ..fileio import write_atomic

GLB, OBJ, MTL, TEXTURE = "mesh.glb", "mesh.obj", "mesh.mtl", "texture.png"
MATERIAL = "albedo"


@dataclass
class Asset:
    """What gets written, already in glTF's frame. Either uv + texture, or colors."""
    vertices: np.ndarray              # [V, 3] float
    faces: np.ndarray                 # [F, 3] int, counter-clockwise seen from outside
    normals: np.ndarray               # [V, 3] unit
    uv: np.ndarray | None = None      # [V, 2]: u across, v down the texture (glTF's convention)
    texture: np.ndarray | None = None  # [S, S, 3] uint8, row 0 at v = 0
    colors: np.ndarray | None = None  # [V, 3] uint8, when there is no texture


def write_asset(asset: Asset, out_dir: Path) -> dict[str, Path]:
    """Write every file; returns name -> path. Each file appears whole or not at all."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {GLB: out_dir / GLB, OBJ: out_dir / OBJ}
    write_atomic(paths[GLB], glb_bytes(asset))
    write_atomic(paths[OBJ], obj_text(asset).encode())
    if asset.texture is not None:
        paths[MTL], paths[TEXTURE] = out_dir / MTL, out_dir / TEXTURE
        write_atomic(paths[MTL], mtl_text().encode())
        write_atomic(paths[TEXTURE], _png(asset.texture))
    return paths


def glb_bytes(asset: Asset) -> bytes:
    """A binary glTF by trimesh: one mesh with one metallic-roughness material (metallic 0, since
    glTF's default metallic 1 would render the albedo nearly black), or with COLOR_0 vertex colors
    and no material, which Blender's importer wires into a default material's base color."""
    if asset.texture is not None:
        material = trimesh.visual.material.PBRMaterial(
            name=MATERIAL, baseColorTexture=Image.fromarray(asset.texture), metallicFactor=0.0,
            roughnessFactor=1.0)
        # trimesh keeps UVs with v up (OBJ's convention) and flips them when it writes glTF
        visual = trimesh.visual.TextureVisuals(uv=_v_up(asset.uv), material=material)
    else:
        visual = trimesh.visual.ColorVisuals(vertex_colors=asset.colors)
    mesh = trimesh.Trimesh(asset.vertices, asset.faces, vertex_normals=asset.normals, visual=visual,
                           process=False)
    return mesh.export(file_type="glb", include_normals=True)


def obj_text(asset: Asset) -> str:
    """Wavefront OBJ text. With a texture it points at mesh.mtl; without one (the vertex-color
    fallback) it has no material and the colors follow each position ("v x y z r g b"), which
    Blender's and trimesh's importers read as a color attribute."""
    out = io.StringIO()
    out.write("# Distill3D mesh: +Y up, front toward +Z\n")
    if asset.texture is not None:
        out.write(f"mtllib {MTL}\n")
        np.savetxt(out, asset.vertices, fmt="v %.6f %.6f %.6f")
        np.savetxt(out, _v_up(asset.uv), fmt="vt %.6f %.6f")
    else:
        np.savetxt(out, np.hstack([asset.vertices, asset.colors / 255.0]), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    np.savetxt(out, asset.normals, fmt="vn %.5f %.5f %.5f")
    f = asset.faces + 1
    if asset.texture is not None:
        out.write(f"usemtl {MATERIAL}\n")
        np.savetxt(out, np.repeat(f, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    else:
        np.savetxt(out, np.repeat(f, 2, axis=1), fmt="f %d//%d %d//%d %d//%d")
    return out.getvalue()


def mtl_text() -> str:
    """The OBJ's material: white diffuse, modulated by texture.png."""
    return f"newmtl {MATERIAL}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {TEXTURE}\n"


def _v_up(uv: np.ndarray) -> np.ndarray:
    """glTF UVs (v down the image) -> OBJ / trimesh UVs (v up the image)."""
    return np.column_stack([uv[:, 0], 1.0 - uv[:, 1]])


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
