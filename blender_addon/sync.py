"""The bridge from the session (sockets, plain data) to Blender data, on the main thread only.

`tick` is the `bpy.app.timers` callback: one non-blocking `Session.tick`, then the updates applied to
Blender data (preview image, live mesh, imported result) and the panel redrawn. In `blender -b`
timers never fire, so `run_until` drives the very same tick in a loop for blocking scripted use.
"""
from __future__ import annotations

import time
import traceback
from typing import Callable

import bpy

from . import images, importer, placement, prefs, proxy, selection
from .naming import datablock_name, variation_suffix
from .shared import results
from .session import Job, Session, Updates

FAST_S = 0.1   # timer interval while a job runs
SLOW_S = 0.5   # while idle (the backend is still checked on every few seconds)

_session: Session | None = None


def session() -> Session:
    """The add-on's one session, created on first use from the preferences, and made anew (new
    sockets) when the address, timeout or keys in the preferences changed since."""
    global _session
    connection = prefs.get().connection()
    if _session is not None and _session.connection != connection:
        reset_session()
    if _session is None:
        _session = Session(connection)
    return _session


def current() -> Session | None:
    """The session if there is one (drawing the panel never creates sockets)."""
    return _session


def reset_session() -> None:
    """Close the session's sockets; the next use reconnects with the current preferences."""
    global _session
    if _session is not None:
        _session.close()
        _session = None


def tick() -> float | None:
    """The timer callback. Returns the delay until the next call; an error is shown, never raised
    (Blender would silently drop a timer that raises)."""
    try:
        s = session()
        apply(s, s.tick())
        return FAST_S if s.busy else SLOW_S
    except Exception as error:  # keep the timer alive and say what went wrong
        traceback.print_exc()
        if _session is not None:
            _session.last_error = f"internal error in the Distill3D timer: {error}"
        return SLOW_S


def apply(s: Session, updates: Updates) -> None:
    """Carry the session's news over into Blender data."""
    for job_id, event in updates.previews.items():
        job = s.jobs[job_id]
        job.image_name = job.image_name or images.image_name(job.prompt, _suffix(job))
        images.show_png(job.image_name, event["png"])
    for job_id, event in updates.meshes.items():
        job = s.jobs[job_id]
        if job.imported or not job.request.get("coarse_mesh_every", 1):
            continue
        job.proxy_name = job.proxy_name or proxy.proxy_name(job.prompt, _suffix(job))
        proxy.show_mesh(job.proxy_name, event, placement.slot_location(job.origin, job.slot, job.size), job.size)
    for job_id, png in updates.thumbnails.items():
        images.show_png(images.thumbnail_name(job_id), png, keep=False)
    for job, data in updates.results:
        _import(job, data)
    if updates:
        redraw()


def _suffix(job: Job) -> str:
    return variation_suffix(job.variations, job.request.get("seed"))


def _import(job: Job, files: dict[str, bytes]) -> None:
    """Put a finished job's result into the scene: a new object, a shape in the selection's place
    (which is hidden), or the selection's new texture (selection.py)."""
    proxy.remove(job.proxy_name)
    job.proxy_name = ""
    name = datablock_name(job.prompt, _suffix(job))
    try:
        if job.source == "texture" and job.selection is not None:
            objects = [selection.apply_texture(job.selection, name, files[results.TEXTURE],
                                               files.get(results.CORNER_UV), duplicate=job.selection.duplicate)]
        else:
            box = None
            if job.source == "shape" and job.selection is not None:
                box = (job.selection.matrix_world, job.selection.low, job.selection.high)
            objects = importer.import_glb(files[results.MESH], name,
                                          placement.slot_location(job.origin, job.slot, job.size), job.size, box)
            if box is not None:
                selection.hide(job.selection.object_name)
    except (importer.ImportFailed, selection.SelectionError) as error:
        job.import_error = str(error)
        return
    job.object_names = [obj.name for obj in objects]
    job.imported = True


def redraw() -> None:
    """Ask every 3D view to redraw its sidebar (a timer changing data does not do that by itself)."""
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def run_until(done: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> bool:
    """Drive `tick` until `done()` (True) or the timeout (False). For scripts and `blender -b`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        tick()
        time.sleep(poll_s)
    return True


def start_timer() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=SLOW_S, persistent=True)


def stop() -> None:
    """Remove the timer and close every socket (add-on disabled)."""
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    reset_session()
