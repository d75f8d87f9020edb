"""How long a submit that carries a large mesh takes: the upload over loopback ZeroMQ and the backend's
checks and write of it (shared/PROTOCOL.md "Sending a mesh"; docs/blender.md).

    python bench/bench_upload.py [--side 708]

A wavy grid of side x side vertices, 2 (side - 1)^2 triangles (708: just under the 1,000,000 cap), with
random corner UVs, submitted with source "texture" to an in-process server whose training does nothing.
The server is given time to finish its start-up imports first, as a running backend has.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.client import Client  # noqa: E402
from tests.server_fakes import instant_train, running_server  # noqa: E402


def grid(side: int) -> dict:
    x, y = np.meshgrid(np.linspace(0, 1, side), np.linspace(0, 1, side))
    vertices = np.stack([x.ravel(), 0.1 * np.sin(3 * x.ravel()), y.ravel()], 1).astype("<f4")
    i = (np.arange(side - 1)[:, None] * side + np.arange(side - 1)[None, :]).ravel()
    faces = np.concatenate([np.stack([i, i + side, i + 1], 1), np.stack([i + 1, i + side, i + side + 1], 1)])
    uv = np.random.default_rng(0).random((3 * len(faces), 2)).astype("<f4")
    return {"vertices": vertices, "faces": faces.astype("<i4"), "corner_uv": uv}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=708)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    mesh = grid(args.side)
    size = sum(a.nbytes for a in mesh.values())
    print(f"{len(mesh['faces']):,} triangles, {len(mesh['vertices']):,} vertices, {size / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory() as tmp, running_server(tmp, train_fn=instant_train) as server:
        time.sleep(15)  # the server's start-up imports (its warm-up thread)
        with Client(f"tcp://127.0.0.1:{server.port}", timeout_s=60) as client:
            for _ in range(args.repeats):
                started = time.perf_counter()
                client.submit({"prompt": "a red cube", "source": "texture"}, mesh=mesh)
                print(f"submit with the mesh: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
