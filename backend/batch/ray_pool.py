"""Running batch items on Ray: one actor per device, each a BatchItemRunner (item_runner.py) that
keeps its prior loaded between items. Ray places the actors (one GPU each with num_gpus=1, CPU actors
where the cluster has no GPU; backend/runner/ray_connection.py sizes them); items go to whichever
actor is free. When an actor's process dies, its item resumes from its last checkpoint
(BatchItemRunner.run) on the next free actor, and Ray places a replacement.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

from ..errors import UserError
from ..runner.ray_connection import actor_options, first_line
from .item_runner import BatchItemRunner

ITEM_RETRIES = 2                 # an item whose worker process dies is tried 1 + 2 times in all
POLL_S = 1.0                     # how often the driver asks the workers for progress


def run_on_ray(payloads: list[dict], out: str, workers: int | None, on_start: Callable[[str], None],
               on_outcome: Callable[[dict], None], on_tick: Callable[[dict], None],
               stop_requested: Callable[[], bool]) -> dict[str, Any]:
    """Run every payload ({"id", "settings"}) on Ray actors; report through the callbacks. Returns
    what batch.json records about the workers. Needs backend.runner.ray_connection.connect() first.

    When a worker process dies (killed, out of memory, its node lost), its item goes back to the
    front of the queue and resumes from its checkpoint on the next free worker, and a replacement
    actor is started wherever Ray finds the resources. Items only go to workers that have answered,
    so a replacement that cannot be placed (a lost node's GPU) holds nothing up."""
    import ray
    from ray.exceptions import RayActorError, RayError

    count, resources, threads = actor_options(workers, len(payloads))
    actor_class = ray.remote(max_restarts=0, max_concurrency=2, **resources)(BatchItemRunner)
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
