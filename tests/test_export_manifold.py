"""manifold.make_manifold and cleanup.mend on small meshes built by hand: coincident faces, sheets
touching at a vertex, holes, zero normals, and a mending that gives up."""
from __future__ import annotations

import numpy as np
import trimesh

from backend.export.manifold import make_manifold, unit_normals
from tests.helpers import single_fan_everywhere


def tetrahedron(offset=(0.0, 0.0, 0.0), first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float) + offset
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]) + first
    return vertices, faces


def test_make_manifold_keeps_a_closed_manifold_and_drops_coincident_faces():
    vertices, faces = tetrahedron()
    same = make_manifold(vertices, faces)
    np.testing.assert_array_equal(same[1], faces)
    # a back-to-back pair (what decimation leaves) and a same-wound copy: the pair goes, the copy merges
    extra = np.array([[0, 1, 2], [0, 2, 1], [1, 3, 0]])
    out_vertices, out_faces = make_manifold(vertices, np.vstack([faces, extra]))
    assert len(out_vertices) == 4 and sorted(map(tuple, out_faces)) == sorted(map(tuple, faces))


def test_make_manifold_separates_sheets_touching_at_a_vertex_and_closes_holes():
    """Two balls sharing one vertex (two sheets meeting at a point), and a third ball with a face
    missing: three closed balls come out."""
    ball = trimesh.creation.icosphere(subdivisions=1, radius=0.5)
    top = int(np.argmax(ball.vertices[:, 2]))
    n = len(ball.vertices)
    upper = ball.vertices + [0.0, 0.0, 2.0 * ball.vertices[top, 2]]   # its lowest vertex on `top`
    bottom = int(np.argmin(upper[:, 2]))
    upper_faces = ball.faces + n
    upper_faces[upper_faces == bottom + n] = top
    vertices = np.vstack([ball.vertices, upper, ball.vertices + [3.0, 0.0, 0.0]])
    faces = np.vstack([ball.faces, upper_faces, ball.faces[1:] + 2 * n])
    assert not single_fan_everywhere(faces)
    out_vertices, out_faces = make_manifold(vertices, faces)
    mesh = trimesh.Trimesh(out_vertices, out_faces, process=False)
    mesh.remove_unreferenced_vertices()
    assert mesh.is_watertight and mesh.is_winding_consistent and single_fan_everywhere(mesh.faces)
    bodies = mesh.split(only_watertight=False)
    assert len(bodies) == 3 and all(body.volume > 0.9 * ball.volume for body in bodies)


def test_unit_normals_never_zero():
    """A back-to-back pair alone gives trimesh zero vertex normals; unit_normals gives unit ones."""
    mesh = trimesh.Trimesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float), np.array([[0, 1, 2], [0, 2, 1]]),
                           process=False)
    assert np.allclose(mesh.vertex_normals, 0.0)
    np.testing.assert_allclose(np.linalg.norm(unit_normals(mesh), axis=1), 1.0)


def test_mending_that_gives_up_keeps_the_mesh_without_coincident_faces(monkeypatch):
    """If make_manifold cannot close a mesh, the export goes on with the mesh minus its back-to-back
    pairs (which give zero normals) instead of failing."""
    from backend.export import cleanup, manifold

    def give_up(vertices, faces, rounds=10):
        raise manifold.NotManifold("the mesh is still not a closed manifold after 0 rounds of mending")

    monkeypatch.setattr(cleanup, "make_manifold", give_up)
    box = trimesh.creation.box()
    faces = np.vstack([box.faces, box.faces[:1, ::-1]])  # one back-to-back pair on the first face
    mended = cleanup.mend(trimesh.Trimesh(box.vertices, faces, process=False))
    assert len(mended.faces) == len(box.faces) - 1
    assert not any(sorted(f) == sorted(box.faces[0]) for f in mended.faces.tolist())
