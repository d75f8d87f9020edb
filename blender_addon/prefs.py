"""Add-on preferences: where the backend is, and how to start one (Edit > Preferences > Add-ons)."""
from __future__ import annotations

import bpy
from bpy.props import FloatProperty, IntProperty, StringProperty

from .shared.protocol import DEFAULT_HOST, DEFAULT_PORT

ADDON = __package__  # the add-on's module name ("bl_ext.<repository>.distill3d" once installed)


def _reconnect(self, context) -> None:
    from . import sync  # a changed address or timeout takes effect at once
    sync.reset_session()


class Distill3DPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON

    host: StringProperty(name="Host", default=DEFAULT_HOST, update=_reconnect,
                         description="The backend's address; keep 127.0.0.1 unless the backend runs elsewhere "
                                     "with CurveZMQ keys")
    port: IntProperty(name="Port", default=DEFAULT_PORT, min=1, max=65534, update=_reconnect,
                      description="The backend's command port (events use the next port)")
    timeout: FloatProperty(name="Timeout", default=5.0, min=0.2, max=120.0, unit="TIME_ABSOLUTE",
                           update=_reconnect, description="Seconds to wait for an answer before calling the "
                                                          "backend unreachable")
    backend_path: StringProperty(name="Backend folder", subtype="DIR_PATH", default="",
                                 description="The Distill3D checkout (holding backend/ and build.py); its .venv "
                                             "Python is used when Backend Python is empty")
    python_path: StringProperty(name="Backend Python", subtype="FILE_PATH", default="",
                                description="The Python that has torch and the backend installed (not Blender's)")
    data_dir: StringProperty(name="Data folder", subtype="DIR_PATH", default="",
                             description="Where the backend keeps jobs and results (empty: its default)")

    @property
    def address(self) -> str:
        host = self.host.strip() or DEFAULT_HOST
        return f"tcp://[{host}]:{self.port}" if ":" in host else f"tcp://{host}:{self.port}"

    def draw(self, context) -> None:
        layout = self.layout
        col = layout.column(heading="Connection")
        row = col.row(align=True)
        row.prop(self, "host")
        row.prop(self, "port")
        col.prop(self, "timeout")
        col = layout.column(heading="Local backend")
        col.prop(self, "backend_path")
        col.prop(self, "python_path")
        col.prop(self, "data_dir")
        col.label(text="Start backend runs: <Backend Python> -m backend serve --port <Port>", icon="INFO")


def get(context=None) -> Distill3DPreferences:
    context = context or bpy.context
    return context.preferences.addons[ADDON].preferences


CLASSES = (Distill3DPreferences,)
