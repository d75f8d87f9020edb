"""Mesh export: a trained field -> mesh.glb and mesh.obj + mesh.mtl + texture.png; and a coarse
vertex-colored proxy for the live view.

    result = export_mesh(field, out_dir, resolution=256, texture_size=1024)   # ExportResult
    vertices, faces, colors = coarse_mesh(field, resolution=64)     # glTF's frame, like the files

`field` is anything with density(points [N, 3]) -> [N] and albedo(points [N, 3]) -> [N, 3] in [0, 1]
(torch; points in the backend world, +Z up, front +X), e.g. backend.nerf.NeRFModel.
To measure a written asset: readback.load_asset / texture_color; mesh_occupancy for volume IoU.
"""
from .coarse import coarse_mesh
from .extract import DEFAULT_THRESHOLD
from .pipeline import ExportResult, export_mesh, settings_of
from .raster import mesh_occupancy

__all__ = ["DEFAULT_THRESHOLD", "ExportResult", "coarse_mesh", "export_mesh", "mesh_occupancy", "settings_of"]
