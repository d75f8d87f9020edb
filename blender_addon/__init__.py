"""Distill3D for Blender: type a prompt, get a textured 3D object from a local score distillation backend.

View3D > Sidebar > Distill3D. The add-on talks to the backend only through the bundled client
(`shared/`, copied in by the build) over ZeroMQ; it never imports torch. Scripting: see README.md,
e.g. `bpy.ops.distill3d.generate(prompt="a red cube", preset="tiny", wait=True)`.

Submodules are imported inside register(), not at the top: `python -m blender_addon.package` (the
build) imports this package without Blender and without the bundled `shared/` subpackage.
"""
from __future__ import annotations


def _classes():
    from . import operators, panel, prefs
    return (*prefs.CLASSES, *operators.CLASSES, *panel.CLASSES)


def register() -> None:
    import bpy

    from . import launcher, props, sync
    props.register()
    for cls in _classes():
        bpy.utils.register_class(cls)
    launcher.install()
    sync.start_timer()


def unregister() -> None:
    """Leaves nothing behind: timer removed, sockets closed, request thread joined, our backend stopped."""
    import bpy

    from . import launcher, props, sync
    sync.stop()
    launcher.uninstall()
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
    props.unregister()
