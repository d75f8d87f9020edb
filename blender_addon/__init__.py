"""Distill3D for Blender: type a prompt, get a textured 3D object from a local score distillation backend.

View3D > Sidebar > Distill3D. The add-on talks to the backend only through the bundled client
(`shared/`, copied in by tools/build_addon.py) over ZeroMQ; it never imports torch. Scripting: see
README.md, e.g. `bpy.ops.distill3d.generate(prompt="a red cube", preset="tiny", wait=True)`.
"""
from __future__ import annotations

import bpy

from . import launcher, operators, panel, prefs, props, sync

CLASSES = (*prefs.CLASSES, *operators.CLASSES, *panel.CLASSES)


def register() -> None:
    props.register()
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    launcher.install()
    sync.start_timer()


def unregister() -> None:
    """Leaves nothing behind: timer removed, sockets closed, request thread joined, our backend stopped."""
    sync.stop()
    launcher.uninstall()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
    props.unregister()
