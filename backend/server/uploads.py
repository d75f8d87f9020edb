"""A mesh sent with a submit (source "texture" or "shape"): checked, then kept in the job's folder.

shared.protocol has already checked the frames' lengths against the counts; here the values are checked
(NaN, faces past the vertices, a degenerate box, the UV layer) by the texture mode's own input check,
backend.texture.mesh_input, so a mesh from Blender and a mesh file get the same sentences. The arrays
are stored as they came, in glTF's frame, as `source_mesh.npz` in mesh_input's upload format
(vertices_gltf float32 [V, 3], faces int32 [F, 3], corner_uv float32 [3F, 2] when sent; its
load_source_mesh reads it) next to request.json: the job's config points at it, so a
job that resumes after a restart finds its mesh (shared/PROTOCOL.md "Sending a mesh").
"""
from __future__ import annotations

import io

import numpy as np

from shared.protocol import MESH_FRAMES, ProtocolError

from ..errors import UserError

SOURCE_MESH_NAME = "source_mesh.npz"


def mesh_arrays(frames: dict[str, bytes]) -> dict[str, np.ndarray]:
    """The decoded frames (shared.protocol.decode_mesh) as arrays, checked, named as mesh_input's
    uploads are (UPLOAD_ARRAYS: vertices_gltf, faces, corner_uv). ProtocolError (field "mesh") naming
    the problem and the fix for a mesh the backend cannot use."""
    from ..texture.mesh_input import UPLOAD_ARRAYS, check

    shapes = {"vertices": ("<f4", 3), "faces": ("<i4", 3), "corner_uv": ("<f4", 2)}
    arrays = {stored: np.frombuffer(frames[sent], shapes[sent][0]).reshape(-1, shapes[sent][1])
              for sent, stored in zip(MESH_FRAMES, UPLOAD_ARRAYS) if sent in frames}
    try:
        check(*(arrays.get(name) for name in UPLOAD_ARRAYS), name="the selected mesh")
    except UserError as error:
        raise ProtocolError(str(error), "mesh") from None
    return arrays


def warm_up() -> None:
    """Import the mesh checks ahead of the first upload (the server calls it on a side thread)."""
    from ..texture import mesh_input  # noqa: F401  (it imports torch and the export with it: seconds)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The arrays as an uncompressed .npz (exact bytes, quick to write and to read back)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
