"""The add-on's operators: the panel's buttons, and the scripting API (see README.md in this folder).

    bpy.ops.distill3d.generate(prompt="a red cube", method="fsd", preset="tiny", wait=True)

With wait=True the operator blocks and drives the add-on's polling itself until the mesh is in the
scene (timers never fire in `blender -b`); a failure raises RuntimeError carrying the backend's
message. Without it, it returns at once and the timer follows the job; started from the panel (a
button invokes the operator), it also starts `distill3d.watch`, so Esc over a 3D viewport cancels.
"""
from __future__ import annotations

import time

import bpy
from bpy.props import BoolProperty, FloatProperty, StringProperty

from . import connection, launcher, prefs, props, selection, sync
from .shared import results
from .shared.protocol import ACTIVE_STATES, CANCELLED, DONE, FAILED

# A blocking call gives a backend that stopped answering this many client timeouts to come back
# before it fails: a script should fail fast, not hang on a dead backend.
LOST_GRACE_TIMEOUTS = 2.0
# The panel settings that say where the result goes, also arguments of distill3d.generate.
PLACEMENT_SETTINGS = ("size", "texture_target")


def _cursor(context) -> tuple[float, float, float]:
    return tuple(context.scene.cursor.location)


class DISTILL3D_OT_generate(bpy.types.Operator):
    """Generate a textured 3D object from the prompt on the Distill3D backend"""
    bl_idname = "distill3d.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}

    # Its arguments are the panel's settings (props.REQUEST_SETTINGS, plus where the result goes),
    # added below; each one left out takes the panel's value (Scene.distill3d).
    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until the mesh is imported (for scripts and blender -b)")
    timeout: FloatProperty(name="Timeout", default=24 * 3600.0, min=1.0, options={"SKIP_SAVE"},
                           description="With wait: give up after this many seconds")

    def execute(self, context):
        overrides = {name: getattr(self, name) for name in props.REQUEST_SETTINGS
                     if self.properties.is_property_set(name)}
        settings = context.scene.distill3d
        try:
            requests = props.requests(settings, **overrides)
            if not requests[0]["prompt"]:
                raise props.BadSettings("The prompt is empty: type what to make, e.g. \"a red cube\"")
            chosen = self._selection(context, requests[0].get("source", "new"))
        except (props.BadSettings, selection.SelectionError) as error:
            return self._refuse(str(error))
        size = self.size if self.properties.is_property_set("size") else settings.size
        origin = _cursor(context)
        submit = {}
        if chosen is not None:  # the live mesh of a shape job grows where the selection is
            origin, size = chosen.world_bottom_centre, chosen.world_size
            names = (results.TEXTURE,) + (() if chosen.has_uv else (results.CORNER_UV,))
            submit = dict(mesh=chosen.mesh, selection=chosen,
                          result_names=names if requests[0]["source"] == "texture" else (results.MESH,))
        session = sync.session()
        sync.start_timer()
        if not self.wait:
            session.submit(requests, origin, size, **submit)
            self.report({"INFO"}, f"Distill3D: starting {len(requests)} job(s) for \"{requests[0]['prompt']}\"")
            return {"FINISHED"}
        return self._run_blocking(session, requests, origin, size, submit)

    def _selection(self, context, source: str):
        """The selection to send for a texture or shape job (None for a new object)."""
        if source == "new":
            return None
        chosen = selection.read(context)
        target = (self.texture_target if self.properties.is_property_set("texture_target")
                  else context.scene.distill3d.texture_target)
        chosen.duplicate = target == "DUPLICATE"
        return chosen

    def _refuse(self, message: str):
        """Say why nothing started, in the status bar and in the panel, where the user looks."""
        self.report({"ERROR"}, f"Distill3D: {message}")
        sync.session().last_error = message
        sync.redraw()
        return {"CANCELLED"}

    def invoke(self, context, event):
        result = self.execute(context)
        if "FINISHED" in result and not self.wait and context.window is not None:  # none in blender -b
            bpy.ops.distill3d.watch("INVOKE_DEFAULT")
        return result

    def _run_blocking(self, session, requests, origin, size, submit):
        answer: dict = {}
        session.submit(requests, origin, size,
                       on_submitted=lambda jobs, error: answer.update(jobs=jobs, error=error), **submit)
        if not sync.run_until(lambda: answer, timeout_s=len(requests) * session.timeout_s + 5.0):
            self.report({"ERROR"}, f"Distill3D: no answer from {session.address}: start the backend")
            return {"CANCELLED"}
        jobs = answer["jobs"]
        if answer["error"] or not jobs:
            self.report({"ERROR"}, f"Distill3D: {answer['error']}")
            if not jobs:
                return {"CANCELLED"}
        lost_since = None

        def settled() -> bool:
            nonlocal lost_since
            if any(job.lost_contact for job in jobs):  # the backend stopped answering mid-job
                lost_since = lost_since or time.monotonic()
                return time.monotonic() - lost_since > LOST_GRACE_TIMEOUTS * session.timeout_s
            lost_since = None
            return all(job.finished for job in jobs)

        finished_in_time = sync.run_until(settled, timeout_s=self.timeout)
        problems = []
        for job in jobs:
            if job.lost_contact and job.state in ACTIVE_STATES:
                problems.append(f"the backend at {session.address} stopped answering while \"{job.prompt}\" was "
                                f"{job.state}: restart it ({session.backend_message or 'no answer'})")
            elif job.state == FAILED:
                problems.append(f"\"{job.prompt}\" failed: {job.message or 'the backend gave no reason'}")
            elif job.state == CANCELLED:
                problems.append(f"\"{job.prompt}\" was cancelled")
            elif job.import_error:
                problems.append(job.import_error)
            elif not job.finished:
                problems.append(f"\"{job.prompt}\" is still {job.state} after {self.timeout:g} s: "
                                "raise timeout, or cancel it with bpy.ops.distill3d.cancel()")
        if problems or not finished_in_time:
            self.report({"ERROR"}, "Distill3D: " + "; ".join(problems or ["timed out"]))
            return {"CANCELLED"}
        names = ", ".join(name for job in jobs for name in job.object_names[:1])
        self.report({"INFO"}, f"Distill3D: imported {names}")
        return {"FINISHED"}


for _name in (*props.REQUEST_SETTINGS, *PLACEMENT_SETTINGS):
    DISTILL3D_OT_generate.__annotations__[_name] = props.argument(_name)


class DISTILL3D_OT_cancel(bpy.types.Operator):
    """Stop the running Distill3D jobs (or one job, by id)"""
    bl_idname = "distill3d.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    job_id: StringProperty(name="Job", description="The job to cancel (empty: all running jobs from here)")

    def execute(self, context):
        session = sync.session()
        ids = [self.job_id] if self.job_id else [job.job_id for job in session.active_jobs]
        for job_id in ids:
            session.cancel(job_id)
        self.report({"INFO"}, f"Distill3D: cancelling {len(ids)} job(s)")
        return {"FINISHED"}


def esc_action(event, session, window) -> str:
    """What the Esc watcher does with an event: "cancel" (Esc pressed over a 3D viewport while jobs
    run), "stop" (no job runs any more: the watcher ends) or "pass" (anything else goes on to Blender)."""
    if session is None or not session.active_jobs:
        return "stop"
    if event.type == "ESC" and event.value == "PRESS" and _over_view3d(window, event.mouse_x, event.mouse_y):
        return "cancel"
    return "pass"


def _over_view3d(window, x: int, y: int) -> bool:
    screen = getattr(window, "screen", None)
    return screen is not None and any(area.type == "VIEW_3D" and area.x <= x < area.x + area.width
                                      and area.y <= y < area.y + area.height for area in screen.areas)


class DISTILL3D_OT_watch(bpy.types.Operator):
    """While Distill3D jobs run, Esc over a 3D viewport cancels them (started by the panel's Generate)"""
    bl_idname = "distill3d.watch"
    bl_label = "Cancel Distill3D jobs with Esc"
    bl_options = {"INTERNAL"}

    watching = False  # one watcher per Blender is enough, however many jobs run

    def invoke(self, context, event):
        if DISTILL3D_OT_watch.watching or context.window is None:  # no window: nothing to press Esc in
            return {"CANCELLED"}
        DISTILL3D_OT_watch.watching = True
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        # Every event but Esc over a 3D view passes through untouched: the UI stays fully usable.
        session = sync.current()
        action = esc_action(event, session, context.window)
        if action == "pass":
            return {"PASS_THROUGH"}
        DISTILL3D_OT_watch.watching = False
        if action == "stop":
            return {"FINISHED", "PASS_THROUGH"}
        for job in session.active_jobs:
            session.cancel(job.job_id)
        self.report({"INFO"}, "Distill3D: cancelling (Esc)")
        sync.redraw()
        return {"FINISHED"}

    def cancel(self, context):  # Blender ends the modal (window closed, file loaded)
        DISTILL3D_OT_watch.watching = False


class DISTILL3D_OT_import_job(bpy.types.Operator):
    """Import the mesh of a finished job from the backend's history, at the 3D cursor"""
    bl_idname = "distill3d.import_job"
    bl_label = "Import"
    bl_options = {"REGISTER"}

    job_id: StringProperty(name="Job")
    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until imported (for scripts)")

    def execute(self, context):
        session = sync.session()
        status = next((s for s in session.history if s.get("job_id") == self.job_id), None)
        job = session.reimport(status or {"job_id": self.job_id, "state": DONE}, _cursor(context),
                               context.scene.distill3d.size)
        sync.start_timer()
        if self.wait:
            sync.run_until(lambda: job.finished, timeout_s=session.timeout_s + 60.0)
            if not job.imported:
                self.report({"ERROR"}, f"Distill3D: {job.import_error or 'the mesh did not arrive'}")
                return {"CANCELLED"}
        return {"FINISHED"}


class DISTILL3D_OT_start_backend(bpy.types.Operator):
    """Start a local Distill3D backend with the Python and folder set in the add-on preferences"""
    bl_idname = "distill3d.start_backend"
    bl_label = "Start backend"

    def execute(self, context):
        p = prefs.get(context)
        try:
            launcher.start(bpy.path.abspath(p.python_path), bpy.path.abspath(p.backend_path), p.port,
                           bpy.path.abspath(p.data_dir))
        except launcher.LaunchError as error:
            self.report({"ERROR"}, f"Distill3D: {error}")
            return {"CANCELLED"}
        except OSError as error:
            self.report({"ERROR"}, f"Distill3D: could not start the backend ({error}): check \"Backend Python\" "
                                   "in the add-on preferences")
            return {"CANCELLED"}
        sync.session().probe_now()
        sync.start_timer()
        self.report({"INFO"}, "Distill3D: starting the backend (it takes a few seconds to load)")
        return {"FINISHED"}


class DISTILL3D_OT_stop_backend(bpy.types.Operator):
    """Stop the backend this Blender started"""
    bl_idname = "distill3d.stop_backend"
    bl_label = "Stop backend"

    def execute(self, context):
        launcher.stop()
        sync.session().probe_now()
        return {"FINISHED"}


class DISTILL3D_OT_refresh(bpy.types.Operator):
    """Check on the backend now and reload the job history"""
    bl_idname = "distill3d.refresh"
    bl_label = "Refresh"

    def execute(self, context):
        session = sync.session()
        session.probe_now()
        session.refresh_history()
        sync.start_timer()
        return {"FINISHED"}


class DISTILL3D_OT_generate_keys(bpy.types.Operator):
    """Make a new client key pair for a backend that requires keys; the preferences then show what to
    put on the server"""
    bl_idname = "distill3d.generate_keys"
    bl_label = "Generate client keys"

    def invoke(self, context, event):
        if prefs.get(context).client_secret_key:  # replacing keys locks this Blender out until the server learns them
            return context.window_manager.invoke_confirm(self, event)
        return self.execute(context)

    def execute(self, context):
        p = prefs.get(context)
        p.client_public_key, p.client_secret_key = connection.new_client_keys()
        self.report({"INFO"}, "Distill3D: new client keys. Put the public one on the server: see the add-on "
                              "preferences (Copy certificate)")
        return {"FINISHED"}


class DISTILL3D_OT_copy_certificate(bpy.types.Operator):
    """Copy the client's public certificate, for the server's --authorized-keys folder"""
    bl_idname = "distill3d.copy_certificate"
    bl_label = "Copy certificate"

    def execute(self, context):
        public = prefs.get(context).client_public_key.strip()
        if not public:
            self.report({"ERROR"}, "Distill3D: no client public key yet: press Generate client keys first")
            return {"CANCELLED"}
        context.window_manager.clipboard = connection.certificate(public)
        self.report({"INFO"}, "Distill3D: certificate copied; save it as <name>.key in the server's "
                              "--authorized-keys folder")
        return {"FINISHED"}


CLASSES = (DISTILL3D_OT_generate, DISTILL3D_OT_cancel, DISTILL3D_OT_watch, DISTILL3D_OT_import_job,
           DISTILL3D_OT_start_backend, DISTILL3D_OT_stop_backend, DISTILL3D_OT_refresh,
           DISTILL3D_OT_generate_keys, DISTILL3D_OT_copy_certificate)
