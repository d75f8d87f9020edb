"""View3D > Sidebar > Distill3D: the prompt, settings, progress, live preview, history and backend status.

Drawing reads plain session data only: it never opens sockets or waits. Errors are shown here, in the
panel the user is looking at, with what to do about them.
"""
from __future__ import annotations

import textwrap

import bpy

from . import images, launcher, prefs, props, selection, sync
from .session import HISTORY_ROWS, Job
from .shared.protocol import ACTIVE_STATES, CANCELLED, DONE, FAILED
from .shared.version import __version__


def _wrapped(layout, context, text: str, icon: str = "NONE") -> None:
    """A long message as several labels that fit the sidebar's width."""
    width = max(20, int((context.region.width if context.region else 300) / 7))
    for i, line in enumerate(textwrap.wrap(text, width) or [""]):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


def _eta(seconds) -> str:
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def draw_backend(layout, context, session) -> None:
    """The backend's state, and what to do when it is not there."""
    p = prefs.get(context)
    box = layout.box()
    col = box.column(align=True)
    state = session.backend if session else "unknown"
    if state == "ok":
        info = session.info
        devices = ", ".join(str(d) for d in (info.get("devices") or [])) or "?"
        col.label(text=f"Backend {info.get('version', '?')} on {devices}", icon="CHECKMARK")
        if info.get("version") and info["version"] != __version__:  # same protocol, so it still works
            _wrapped(col, context, f"The add-on is {__version__}: update the older of the two to match.",
                     icon="INFO")
        if launcher.running():
            col.operator("distill3d.stop_backend", icon="PAUSE")
        return
    if state == "unknown":
        col.label(text=f"Looking for the backend at {p.address}...", icon="TIME")
        return
    if state == "unreachable":
        if launcher.running():
            col.label(text="The backend is starting...", icon="TIME")
            return
        _wrapped(col, context, session.backend_message or f"No backend at {p.address}.", icon="ERROR")
        if not p.connection().keys:
            _wrapped(col, context, "A backend started with --server-key answers only clients with keys: set "
                                   "them in Preferences > Add-ons > Distill3D.", icon="LOCKED")
        elif session.backend_field != "keys":  # a wrong server key looks like silence, not a refusal
            _wrapped(col, context, "If it is running, check that the server public key in the preferences is "
                                   "the one in its server.key.", icon="LOCKED")
        exit_message = launcher.exit_message()
        if exit_message:
            _wrapped(col, context, exit_message, icon="CANCEL")
        col.operator("distill3d.start_backend", icon="PLAY")
        return
    # mismatch or error: the client's message already says which side to update, or what is wrong
    _wrapped(col, context, session.backend_message, icon="ERROR")
    col.operator("distill3d.refresh", icon="FILE_REFRESH")


def draw_job(layout, context, job: Job) -> None:
    """One job: progress bar (step, it/s, ETA), or why it stopped."""
    box = layout.box()
    col = box.column(align=True)
    col.label(text=job.prompt + (f"  (seed {job.request.get('seed')})" if job.variations > 1 else ""),
              icon="MESH_MONKEY")
    if job.state in ACTIVE_STATES:
        text = (f"{job.step}/{job.total}  {job.it_per_s:.1f} it/s  ETA {_eta(job.eta_s)}" if job.total
                else job.state.capitalize() + "...")
        col.progress(factor=job.progress, type="BAR", text=text)
        if job.lost_contact:
            _wrapped(col, context, "The backend stopped answering: start it again; the panel reconnects "
                                   "by itself.", icon="ERROR")
        elif job.message:
            _wrapped(col, context, job.message, icon="INFO")
        op = col.operator("distill3d.cancel", text="Cancel", icon="X")
        op.job_id = job.job_id
    elif job.fetching:
        col.label(text="Importing the mesh...", icon="IMPORT")
    elif job.state == FAILED:
        _wrapped(col, context, f"Failed: {job.message or 'the backend gave no reason'}", icon="ERROR")
    elif job.state == CANCELLED:
        col.label(text="Cancelled", icon="CANCEL")
    if job.import_error:
        _wrapped(col, context, job.import_error, icon="ERROR")


def draw_source(layout, context, settings) -> str:
    """The source choice and its settings; returns why the selection cannot be used ("" if it can),
    shown right under the choice."""
    layout.prop(settings, "source")
    if settings.source == "NEW":
        return ""
    if settings.source == "TEXTURE_SELECTED":
        layout.row().prop(settings, "texture_target", expand=True)
    else:
        layout.prop(settings, "shape_strength")
    problem = selection.problem(context.view_layer.objects.active)
    if problem:
        _wrapped(layout.box().column(align=True), context, problem, icon="ERROR")
    return problem


class Distill3DPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Distill3D"


class DISTILL3D_PT_main(Distill3DPanel, bpy.types.Panel):
    bl_idname = "DISTILL3D_PT_main"
    bl_label = "Distill3D"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.distill3d
        session = sync.current()
        draw_backend(layout, context, session)

        col = layout.column()
        col.prop(settings, "prompt", text="", icon="OUTLINER_OB_FONT")
        col.prop(settings, "negative", text="", icon="CANCEL")
        col.prop(settings, "method")
        description = next(item[2] for item in props.METHOD_ITEMS if item[0] == settings.method)
        box = col.box()
        _wrapped(box.column(align=True), context, description, icon="INFO")
        col.prop(settings, "preset")
        row = col.row(align=True)
        row.prop(settings, "variations")
        row.prop(settings, "live_mesh", toggle=True, icon="MESH_ICOSPHERE")
        col.prop(settings, "size")
        problem = draw_source(col, context, settings)

        active = session.active_jobs if session else []
        row = layout.row(align=True)
        row.scale_y = 1.4
        sub = row.row(align=True)
        sub.enabled = bool(settings.prompt.strip()) and not problem
        sub.operator("distill3d.generate", text="Generate", icon="PLAY")
        if active:
            row.operator("distill3d.cancel", text="Cancel", icon="X")

        if session is not None:
            for job in session.jobs.values():
                if job.state in ACTIVE_STATES or (job.state in (FAILED, CANCELLED) and not job.imported) \
                        or job.import_error or job.fetching:
                    draw_job(layout, context, job)
            if session.last_error:
                _wrapped(layout.box().column(align=True), context, session.last_error, icon="ERROR")
            latest = next((j for j in reversed(list(session.jobs.values())) if j.image_name), None)
            if latest is not None and bpy.data.images.get(latest.image_name) is not None:
                box = layout.box()
                box.label(text=f"Preview: {latest.prompt}", icon="IMAGE_DATA")
                box.template_icon(icon_value=images.icon_id(latest.image_name), scale=10.0)


class DISTILL3D_PT_advanced(Distill3DPanel, bpy.types.Panel):
    bl_idname = "DISTILL3D_PT_advanced"
    bl_label = "Advanced"
    bl_parent_id = "DISTILL3D_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        settings = context.scene.distill3d
        layout = self.layout
        layout.use_property_split = True
        col = layout.column(align=True)
        col.prop(settings, "steps")
        col.prop(settings, "resolution")
        col.prop(settings, "seed")
        row = layout.row(heading="Guidance")
        row.prop(settings, "use_cfg", text="")
        sub = row.row()
        sub.enabled = settings.use_cfg
        sub.prop(settings, "cfg", text="")
        col = layout.column(align=True)
        col.prop(settings, "preview_every")
        col.prop(settings, "mesh_resolution")
        col.prop(settings, "texture_size")
        layout.prop(settings, "normal_map")
        layout.prop(settings, "mesh_denoise")
        layout.prop(settings, "prior")
        layout.prop(settings, "extra")
        specific = [prop for prop, (_, methods) in props.METHOD_OPTIONS.items() if settings.method in methods]
        if specific:
            box = layout.box()
            box.label(text=f"{settings.method.upper()} settings")
            for prop in specific:
                box.prop(settings, prop)


class DISTILL3D_PT_history(Distill3DPanel, bpy.types.Panel):
    bl_idname = "DISTILL3D_PT_history"
    bl_label = "History"
    bl_parent_id = "DISTILL3D_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        session = sync.current()
        row = layout.row()
        row.operator("distill3d.refresh", icon="FILE_REFRESH")
        if session is None or not session.history:
            layout.label(text="No jobs yet")
            return
        for status in session.history[:HISTORY_ROWS]:
            request = status.get("request") or {}
            row = layout.row(align=True)
            state = status.get("state", "?")
            thumbnail = session.thumbnail_of(status.get("job_id", "")) or images.thumbnail_name(status.get("job_id", ""))
            icon_id = images.icon_id(thumbnail)
            if icon_id or bpy.data.images.get(thumbnail) is not None:
                row.label(text="", icon_value=icon_id)
            icon = {DONE: "CHECKMARK", FAILED: "ERROR", CANCELLED: "CANCEL"}.get(state, "TIME")
            row.label(text=f"{request.get('prompt', status.get('job_id'))} · {request.get('method', '?').upper()} "
                           f"· seed {request.get('seed', 0)}", icon=icon)
            sub = row.row(align=True)
            sub.enabled = state == DONE
            op = sub.operator("distill3d.import_job", text="", icon="IMPORT")
            op.job_id = status.get("job_id", "")


CLASSES = (DISTILL3D_PT_main, DISTILL3D_PT_advanced, DISTILL3D_PT_history)
