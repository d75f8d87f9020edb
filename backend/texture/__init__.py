"""Texture mode: paint the artist's mesh (docs/selection.md, "Texture mode").

The geometry stays fixed; only an albedo field and the background are trained, rendered by casting
rays at the mesh (one field query per pixel), then baked into the mesh's own UVs or an xatlas layout.
Submodules: mesh_input (read, check, fit), raycast, texture_field, train_texture, bake.
"""

# The default render size: a render costs one field query per pixel, so it can be larger than the
# NeRF's (the presets' sizes; docs/selection.md, "Texture mode"). CLI and Python API.
TEXTURE_RESOLUTION_CPU, TEXTURE_RESOLUTION_GPU = 128, 256
