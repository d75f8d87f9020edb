"""Add-on preferences: where the backend is, its keys, and how to start one (Edit > Preferences > Add-ons).

Nothing here reacts to a change: the session compares its `Connection` with `connection()` whenever it
is used and reconnects when they differ (sync.session).
"""
from __future__ import annotations

import bpy
from bpy.props import FloatProperty, IntProperty, StringProperty

from .connection import Connection, Keys, certificate
from .shared.protocol import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT_S

ADDON = __package__  # the add-on's module name ("bl_ext.<repository>.distill3d" once installed)


class Distill3DPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON

    host: StringProperty(name="Host", default=DEFAULT_HOST,
                         description=f"The backend's address; keep {DEFAULT_HOST} unless the backend runs "
                                     "elsewhere with CurveZMQ keys")
    port: IntProperty(name="Port", default=DEFAULT_PORT, min=1, max=65534,
                      description="The backend's command port (events use the next port)")
    timeout: FloatProperty(name="Timeout", default=DEFAULT_TIMEOUT_S, min=0.2, max=120.0, unit="TIME_ABSOLUTE",
                           description="Seconds to wait for an answer before calling the backend unreachable")
    server_key: StringProperty(name="Server public key", default="",
                               description="The backend's public key: the 40-character key in its server.key file, "
                                           "or that file's path. Empty for a backend on this machine without keys")
    client_public_key: StringProperty(name="Client public key", default="",
                                      description="This Blender's public key; the server must list it in its "
                                                  "--authorized-keys folder")
    client_secret_key: StringProperty(name="Client secret key", default="", subtype="PASSWORD",
                                      description="This Blender's secret key: never give it to anyone")
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

    def connection(self) -> Connection:
        keys = Keys(bpy.path.abspath(self.server_key.strip()) if self.server_key.strip().startswith("//")
                    else self.server_key.strip(), self.client_public_key.strip(), self.client_secret_key.strip())
        return Connection(self.address, float(self.timeout), keys)

    def draw(self, context) -> None:
        layout = self.layout
        col = layout.column(heading="Connection")
        row = col.row(align=True)
        row.prop(self, "host")
        row.prop(self, "port")
        col.prop(self, "timeout")

        box = layout.box()
        col = box.column()
        col.label(text="Keys: only for a backend started with --server-key (e.g. on another machine)", icon="LOCKED")
        col.prop(self, "server_key")
        col.prop(self, "client_public_key")
        col.prop(self, "client_secret_key")
        row = col.row()
        row.operator("distill3d.generate_keys", icon="KEY_HLT")
        if self.client_public_key.strip():
            row.operator("distill3d.copy_certificate", icon="COPYDOWN")
            sub = col.column(align=True)
            sub.label(text="On the server, save these lines as a file named <anything>.key in the folder given "
                           "to --authorized-keys, then restart it:", icon="INFO")
            for line in certificate(self.client_public_key).splitlines():
                sub.label(text=line)

        col = layout.column(heading="Local backend")
        col.prop(self, "backend_path")
        col.prop(self, "python_path")
        col.prop(self, "data_dir")
        col.label(text="Start backend runs: <Backend Python> -m backend serve --port <Port>", icon="INFO")


def get(context=None) -> Distill3DPreferences:
    context = context or bpy.context
    return context.preferences.addons[ADDON].preferences


CLASSES = (Distill3DPreferences,)
