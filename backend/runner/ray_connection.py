"""The Ray connection the server (`serve --ray`) and batch (`batch --ray`) share: join a cluster or
start a local Ray, fail within seconds on an address where nothing listens, and size the actors to
the cluster's GPUs or CPUs (docs/batch.md, "A cluster"; docs/server.md, "Running jobs on Ray").
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Any

from ..errors import UserError

LOCAL = "local"
OBJECT_STORE_BYTES = 256 << 20   # jobs and items return small dicts (files go to disk): a small object store will do
PROBE_S = 3.0                    # a listening head accepts a TCP connection at once; a dead address gets this long


def connect(address: str) -> dict[str, Any]:
    """Start a local Ray ("local") or join a cluster (an address such as 10.0.0.1:6379, or "auto").
    Returns what it took: {"ray": address, "ray_start_s": seconds}."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: install it with `python3 build.py demo` (or pip install ray)") from None
    started = time.perf_counter()
    if address not in (LOCAL, "auto"):
        check_reachable(address)
    common = dict(log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
    try:
        if address == LOCAL:
            ray.init(address="local", object_store_memory=OBJECT_STORE_BYTES, **common)
        else:
            ray.init(address=address, **common)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise UserError(f"cannot join the Ray cluster at {address!r} ({str(error).splitlines()[0]}): start one with "
                        "`ray start --head` and pass the address it prints, or use --ray local") from None
    return {"ray": address, "ray_start_s": time.perf_counter() - started}


def check_reachable(address: str) -> None:
    """Fail within PROBE_S when nothing listens at a cluster address. ray.init itself keeps retrying
    a dead address for many minutes (docs/batch.md, 'A wrong address, and a simulated cluster'), so
    this TCP connect comes first. It proves only that something listens, not that it is a Ray head."""
    client = address.startswith("ray://")  # Ray Client: the client server's own host:port
    target = address[len("ray://"):] if client else address
    if not client:
        try:  # the host:port ray.init will dial (it swaps 127.0.0.1/localhost for this node's IP)
            from ray._private.services import canonicalize_bootstrap_address
            target = canonicalize_bootstrap_address(target) or target
        except Exception:  # a private Ray helper: without it, probe the address as given
            pass
    host, _, port = target.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal, [::1]:6379
    if not host or not port.isdigit():
        raise UserError(f"--ray {address!r} is not a Ray address: give HOST:PORT as `ray start --head` prints it "
                        "(e.g. 10.0.0.1:6379), or --ray local")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_S):
            pass
    except OSError as error:
        reason = f"no answer within {PROBE_S:g} s" if isinstance(error, socket.timeout) else (
            error.strerror or type(error).__name__).lower()
        raise UserError(f"no Ray cluster answers at {address!r} ({reason}): start one with "
                        "`ray start --head` and pass the address it prints, or use --ray local") from None


def actor_options(workers: int | None, items: int) -> tuple[int, dict[str, Any], int | None]:
    """(number of actors, their Ray resources, torch threads per actor) for this cluster."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:
        if workers and workers > gpus:
            raise UserError(f"--workers {workers} but the Ray cluster has {gpus} GPU(s): each worker holds one GPU, "
                            f"so use --workers {gpus} or fewer")
        count = min(workers or gpus, items)
        return count, {"num_gpus": 1, "num_cpus": 1}, None
    if workers and workers > cpus:
        raise UserError(f"--workers {workers} but the Ray cluster has {cpus} CPU(s) and no GPU: use --workers {cpus} "
                        "or fewer")
    count = min(workers or 1, items)
    threads = max(1, cpus // count)  # the CPUs shared out; torch then uses that many threads per actor
    return count, {"num_cpus": threads}, threads


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def disconnect() -> None:
    import ray

    ray.shutdown()
