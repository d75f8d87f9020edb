"""Running batch items on Ray: one actor per device, each a Worker (worker.py) that keeps its prior
loaded between items. Ray places the actors (one GPU each with num_gpus=1, CPU actors where the
cluster has no GPU); items go to whichever actor is free. When an actor's process dies, its item
resumes from its last checkpoint (Worker.run) on the next free actor, and Ray places a replacement.
"""
from __future__ import annotations

import logging
import socket
import time
from collections import deque
from typing import Any, Callable

from ..errors import UserError
from .worker import Worker

LOCAL = "local"
ITEM_RETRIES = 2                 # an item whose worker process dies is tried 1 + 2 times in all
OBJECT_STORE_BYTES = 256 << 20   # items return small dicts (files go to disk): a small object store will do
POLL_S = 1.0                     # how often the driver asks the workers for progress
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


def run_on_ray(payloads: list[dict], out: str, workers: int | None, on_start: Callable[[str], None],
               on_outcome: Callable[[dict], None], on_tick: Callable[[dict], None],
               stop_requested: Callable[[], bool]) -> dict[str, Any]:
    """Run every payload ({"id", "settings"}) on Ray actors; report through the callbacks. Returns
    what batch.json records about the workers. Needs connect() first.

    When a worker process dies (killed, out of memory, its node lost), its item goes back to the
    front of the queue and resumes from its checkpoint on the next free worker, and a replacement
    actor is started wherever Ray finds the resources. Items only go to workers that have answered,
    so a replacement that cannot be placed (a lost node's GPU) holds nothing up."""
    import ray
    from ray.exceptions import RayActorError, RayError

    count, resources, threads = actor_options(workers, len(payloads))
    actor_class = ray.remote(max_restarts=0, max_concurrency=2, **resources)(Worker)
    started = time.perf_counter()
    actors = [actor_class.remote(threads) for _ in range(count)]
    try:
        identities = ray.get([actor.identity.remote() for actor in actors])
    except RayError as error:  # e.g. a node without Distill3D installed
        raise UserError(f"the Ray workers could not start ({first_line(error)}): install the same Distill3D on "
                        "every node (docs/batch.md, 'A cluster')") from None
    info = {"workers": count, "worker_resources": resources, "workers_ready_s": time.perf_counter() - started,
            "worker_processes": identities, "workers_replaced": 0}

    queue, idle = deque(payloads), deque(range(count))
    busy: dict[Any, tuple[int, dict]] = {}         # run() reference -> (actor slot, payload)
    starting: dict[Any, int] = {}                  # identity() reference of a replacement -> its slot
    polls: dict[int, Any] = {}                     # actor slot -> progress() reference
    progress: dict[str, dict] = {}
    lost: dict[str, int] = {}                      # item id -> worker processes lost while running it
    stopping = False
    while queue or busy:
        if stop_requested() and not stopping:
            stopping = True
            queue.clear()  # never started: they stay pending in batch.json
            for slot in set(range(count)) - set(starting.values()):
                actors[slot].stop.remote()
        while idle and queue:
            slot, payload = idle.popleft(), queue.popleft()
            busy[actors[slot].run.remote(payload, out)] = (slot, payload)
            on_start(payload["id"])
        if not busy and (stopping or not starting):
            break  # done, stopped, or no worker left to run what is queued (those items stay pending)
        ready, _ = ray.wait([*busy, *starting], num_returns=1, timeout=POLL_S)
        for reference in ready:
            if reference in starting:  # a replacement is up
                slot = starting.pop(reference)
                try:
                    info["worker_processes"].append(ray.get(reference))
                    idle.append(slot)
                except RayError:
                    pass  # it could not start either: carry on with the others
                continue
            slot, payload = busy.pop(reference)
            progress.pop(payload["id"], None)
            polls.pop(slot, None)
            try:
                outcome = ray.get(reference)
            except RayActorError as error:  # the process died mid-item
                lost[payload["id"]] = lost.get(payload["id"], 0) + 1
                actors[slot] = actor_class.remote(threads)
                starting[actors[slot].identity.remote()] = slot
                info["workers_replaced"] += 1
                if lost[payload["id"]] <= ITEM_RETRIES and not stopping:
                    queue.appendleft(payload)  # resumes from its checkpoint on the next free worker
                    continue
                outcome = {"id": payload["id"], "state": "failed",
                           "error": f"its worker process was lost {lost[payload['id']]} times ({first_line(error)})"}
            except RayError as error:
                outcome = {"id": payload["id"], "state": "failed", "error": first_line(error)}
            on_outcome(outcome)
            idle.append(slot)
        on_tick(poll_progress(actors, busy, polls, progress))
    return info


def poll_progress(actors: list, busy: dict, polls: dict, progress: dict) -> dict[str, dict]:
    """Ask each busy worker for its progress without waiting: answers that are in go into
    `progress` (item id -> snapshot), the others are collected on a later call."""
    import ray
    from ray.exceptions import RayError

    running = {slot: payload["id"] for slot, payload in busy.values()}
    for slot in set(running) - set(polls):
        polls[slot] = actors[slot].progress.remote()
    answered, _ = ray.wait(list(polls.values()), num_returns=len(polls), timeout=0) if polls else ([], [])
    for slot in [s for s, reference in polls.items() if reference in answered]:
        try:
            snapshot = ray.get(polls.pop(slot))
        except RayError:
            continue  # a worker that just died: its item is handled by run_on_ray
        if snapshot and snapshot["id"] == running.get(slot):
            progress[snapshot["id"]] = snapshot
    return progress


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def disconnect() -> None:
    import ray

    ray.shutdown()
