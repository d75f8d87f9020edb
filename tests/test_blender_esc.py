"""Esc over a 3D viewport cancels the jobs started from the panel (as in dream-textures), everything
else passes through to Blender untouched.

Headless Blender cannot deliver key events: there is no window, so `bpy.ops.distill3d.watch` refuses
to start there (checked below), and the modal handler is called directly with synthetic event and
window objects, the one test double here. The session, its cancel request and the backend that
cancels the job are real (tests/blender_harness.py).
"""
from __future__ import annotations

import types

import pytest

from tests.blender_harness import FAST, addon, addon_module, backend, bpy, connect, scene, tick_until  # noqa: F401


class FakeOperator:
    """Stands in for the operator instance Blender would make (report goes to a list)."""

    def __init__(self):
        self.reports = []

    def report(self, kind, text):
        self.reports.append(text)


def area(kind: str, x: int, width: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(type=kind, x=x, y=0, width=width, height=600)


# A window with the 3D viewport on the left and the properties editor on the right.
CONTEXT = types.SimpleNamespace(window=types.SimpleNamespace(screen=types.SimpleNamespace(
    areas=[area("VIEW_3D", 0, 800), area("PROPERTIES", 800, 300)])))


def event(kind: str, value: str = "PRESS", x: int = 400, y: int = 300) -> types.SimpleNamespace:
    return types.SimpleNamespace(type=kind, value=value, mouse_x=x, mouse_y=y)


@pytest.mark.slow
def test_esc_over_the_viewport_cancels_the_running_job(scene, backend):
    session = connect(backend.port)
    watch = addon_module("operators").DISTILL3D_OT_watch
    # The panel's button invokes Generate, which starts the watcher when there is a window: none here,
    # and the watcher itself refuses to start without one.
    assert bpy.ops.distill3d.generate("INVOKE_DEFAULT", prompt="a green torus", preset="tiny", steps=100_000,
                                      extra=FAST) == {"FINISHED"}
    assert bpy.ops.distill3d.watch("INVOKE_DEFAULT") != {"RUNNING_MODAL"} and not watch.watching
    tick_until(lambda: session.jobs and all(j.state == "running" for j in session.jobs.values()))
    (job,) = session.jobs.values()

    op = FakeOperator()
    watch.watching = True  # as invoke leaves it
    for other in (event("MOUSEMOVE"), event("A"), event("ESC", "RELEASE"), event("ESC", x=900)):  # last: not the 3D view
        assert watch.modal(op, CONTEXT, other) == {"PASS_THROUGH"}
    for _ in range(10):
        addon_module("sync").tick()
    assert job.state == "running" and not op.reports

    assert watch.modal(op, CONTEXT, event("ESC")) == {"FINISHED"}  # consumed: nothing else reacts to it
    assert not watch.watching and "cancelling" in op.reports[0]
    tick_until(lambda: job.state == "cancelled")
    # With nothing running, the next event ends a watcher and still reaches Blender.
    watch.watching = True
    assert watch.modal(op, CONTEXT, event("MOUSEMOVE")) == {"FINISHED", "PASS_THROUGH"}
    assert not watch.watching
