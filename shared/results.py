"""The names of a job's result files: the backend writes them (backend/export/files.py,
backend/texture/bake.py) and clients fetch them by these names (`Client.fetch`; the add-on imports
MESH for a new object, and TEXTURE with CORNER_UV for a textured selection). The latest preview's
name is shared/protocol.py PREVIEW_NAME.
"""

MESH = "mesh.glb"                       # binary glTF: the mesh with its texture embedded
OBJ, MTL = "mesh.obj", "mesh.mtl"       # the same mesh as Wavefront OBJ and its material
TEXTURE = "texture.png"                 # the baked base color
NORMAL_TEXTURE = "texture_normal.png"   # the tangent-space normal map, when one is baked
CORNER_UV = "corner_uv.bin"             # float32 [3F, 2] glTF UVs per triangle corner of a textured selection
REPORT = "report.json"                  # the run's settings, timings, memory and measures (backend/finish.py)
TURNTABLE = "turntable.png"             # the finished run's turntable views in one grid
CHECKPOINT = "checkpoint.pt"            # everything a resume (or a later export) needs
