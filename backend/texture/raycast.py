"""Rays against the fixed mesh: per pixel, the first hit's point, unit normal and a mask.

NVIDIA Warp (`warp-lang`) does the casting: a BVH built once per mesh (`wp.Mesh`) and `mesh_query_ray`
in one kernel over all rays. It installs from wheels on Linux, Windows and macOS, runs the same kernel on
the CPU and on CUDA, and reads and writes torch tensors in place (`wp.from_torch`), so a render never
copies rays between libraries. The choice and its measurements: docs/selection.md, "Ray casting".

Warp compiles the kernel the first time it runs on a device (seconds) and caches the result on disk
(warp's kernel cache), so later runs load it at once.

The normal is the triangle's own (geometric) normal, turned toward the camera: the mesh may be open or
wound either way, and what the camera sees is the side facing it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import Cameras

MAX_DISTANCE = 1.0e6  # rays are not clipped: a camera sees the whole mesh however far it reaches


@functools.lru_cache(maxsize=1)
def _warp():
    """Warp, initialised once and quietly (it prints its devices otherwise), and the casting kernel."""
    import warp as wp

    wp.config.log_level = wp.LOG_WARNING
    wp.init()
    wp.set_module_options({"enable_backward": False})  # the geometry takes no gradient: a smaller, faster build

    @wp.kernel
    def first_hit(mesh: wp.uint64, origins: wp.array(dtype=wp.vec3), dirs: wp.array(dtype=wp.vec3),
                  t_out: wp.array(dtype=wp.float32), face_out: wp.array(dtype=wp.int32)):
        i = wp.tid()
        query = wp.mesh_query_ray(mesh, origins[i], dirs[i], MAX_DISTANCE)
        if query.result:
            t_out[i] = query.t
            face_out[i] = query.face
        else:
            t_out[i] = 0.0
            face_out[i] = -1

    return wp, first_hit


def warp_device(device: torch.device) -> str:
    """A torch device -> Warp's name for it ("cpu", "cuda:0")."""
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return "cpu"


@dataclass
class Hits:
    """The first surface hit of each ray, [B, H, W, ...] like Cameras.rays(); zeros where mask is False."""

    mask: torch.Tensor     # [B, H, W] bool
    points: torch.Tensor   # [B, H, W, 3] world
    normals: torch.Tensor  # [B, H, W, 3] unit, facing the camera
    faces: torch.Tensor    # [B, H, W] int64 triangle index, -1 where the ray misses
    t: torch.Tensor        # [B, H, W] distance along the ray


class MeshRaycaster:
    """A fixed triangle mesh (backend world) ready for casting on `device` (the BVH is built here once)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        wp, self.kernel = _warp()
        self.wp = wp
        self.vertices = torch.as_tensor(np.asarray(vertices, np.float32), device=self.device)
        self.faces = torch.as_tensor(np.asarray(faces, np.int64), device=self.device)
        corners = self.vertices[self.faces]                                                 # [F, 3, 3]
        self.face_normals = F.normalize(torch.linalg.cross(corners[:, 1] - corners[:, 0],
                                                           corners[:, 2] - corners[:, 0]), dim=-1)
        with wp.ScopedDevice(warp_device(self.device)):
            self._points = wp.from_torch(self.vertices.contiguous(), dtype=wp.vec3)
            self._indices = wp.from_torch(self.faces.to(torch.int32).reshape(-1).contiguous(), dtype=wp.int32)
            self.mesh = wp.Mesh(points=self._points, indices=self._indices)

    @torch.no_grad()
    def cast(self, origins: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays [N, 3] (unit directions) -> (t [N], face [N] int64, -1 for a miss)."""
        wp = self.wp
        origins = origins.to(self.device, torch.float32).contiguous()
        dirs = dirs.to(self.device, torch.float32).contiguous()
        t = torch.empty(len(origins), device=self.device)
        face = torch.empty(len(origins), dtype=torch.int32, device=self.device)
        if len(origins):
            # on CUDA the kernel goes on torch's current stream, so it orders with the surrounding torch work
            stream = wp.stream_from_torch(self.device) if self.device.type == "cuda" else None
            wp.launch(self.kernel, dim=len(origins), device=warp_device(self.device), stream=stream,
                      inputs=[self.mesh.id, wp.from_torch(origins, dtype=wp.vec3), wp.from_torch(dirs, dtype=wp.vec3),
                              wp.from_torch(t), wp.from_torch(face)])
        return t, face.long()

    @torch.no_grad()
    def hits(self, cameras: Cameras) -> Hits:
        """Cast one ray through each pixel centre of each camera (Cameras.rays)."""
        origins, dirs = cameras.to(self.device).rays()
        shape = origins.shape[:-1]
        origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        t, face = self.cast(origins, dirs)
        mask = face >= 0
        normals = self.face_normals[face.clamp(min=0)]
        normals = normals * -torch.sign((normals * dirs).sum(-1, keepdim=True)).masked_fill_(~mask[:, None], 0.0)
        points = torch.addcmul(origins, t[:, None], dirs) * mask[:, None]
        return Hits(mask.reshape(shape), points.reshape(*shape, 3), normals.reshape(*shape, 3),
                    face.masked_fill(~mask, -1).reshape(shape), t.reshape(shape))
