"""The Blender add-on, for real: the built extension zip installed into headless Blender (PyPI bpy) the
way Blender installs extensions, talking over loopback ZeroMQ to a real backend subprocess running
the built-in "shapes" prior at the "tiny" preset with a few steps (tests/blender_harness.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tomllib
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.blender_harness import (ADDON, BLENDER_HOME, FAST, JOB_TIMEOUT_S, ROOT, STEPS, Backend,  # noqa: F401
                                   addon, addon_module, addon_zip, backend, bpy, connect, draw_panel,
                                   image_texture_feeds_base_color, labels, prefs, scene, tcp_connections,
                                   tick_until, zmq_threads)
from shared.ports import free_port_pair
from shared.version import PROTOCOL_VERSION, __version__

def images_icon(name: str) -> int:
    return addon_module("images").icon_id(name)


# ----- the package ---------------------------------------------------------------------------------

def test_zip_is_a_valid_extension_with_matching_wheels(addon_zip, addon):
    with zipfile.ZipFile(addon_zip) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert manifest["id"] == "distill3d" and manifest["version"] == __version__
    assert manifest["blender_version_min"] == "4.2.0" and "network" in manifest["permissions"]
    bundled = {n for n in names if n.startswith("wheels/")}
    assert {w.removeprefix("./") for w in manifest["wheels"]} == bundled
    for platform_tag in ("manylinux", "win_amd64", "macosx"):  # every listed platform has a cp311 wheel
        assert any("cp311" in w and platform_tag in w for w in bundled), platform_tag
    assert "shared/client.py" in names and "__init__.py" in names
    shipped = {n for n in names if not n.startswith(("wheels/", "shared/")) and n != "blender_manifest.toml"}
    assert shipped == {p.relative_to(ROOT / "blender_addon").as_posix()  # the add-on's files, and only those
                       for p in (ROOT / "blender_addon").rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and p.name != "blender_manifest.toml"}
    # Blender's own validator accepts it...
    validator = Path(bpy.utils.system_resource("SCRIPTS"), "addons_core", "bl_pkg", "cli", "blender_ext.py")
    done = subprocess.run([sys.executable, str(validator), "validate", str(addon_zip)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # ...and installing it put this platform's pyzmq wheel into the extensions' site-packages.
    site = Path(bpy.utils.user_resource("EXTENSIONS"), ".local", "lib",
                f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    assert (site / "zmq" / "__init__.py").exists()
    # The add-on never imports torch or the backend.
    assert not any(m.startswith(f"{ADDON}.backend") for m in sys.modules)
    for name in names:
        if name.endswith(".py") and not name.startswith("shared/"):
            source = zipfile.ZipFile(addon_zip).read(name).decode()
            assert "import torch" not in source and "from backend" not in source, name


# ----- against a real backend ----------------------------------------------------------------------

@pytest.mark.slow
def test_panel_generate_previews_and_imports_the_textured_mesh(scene, backend):
    session = connect(backend.port)
    settings = scene.distill3d
    settings.prompt = "a red cube"
    settings.method = "sds"
    settings.preset = "tiny"
    settings.steps = STEPS
    settings.preview_every = 5
    settings.extra = FAST
    assert bpy.ops.distill3d.generate() == {"FINISHED"}  # the panel's button: returns at once

    steps_seen, proxies_seen = set(), set()

    def watch():
        for job in session.jobs.values():
            steps_seen.add(job.step)
            if job.proxy_name and bpy.data.objects.get(job.proxy_name) is not None:
                proxies_seen.add(job.proxy_name)
    tick_until(lambda: session.jobs and all(j.finished for j in session.jobs.values()), on_tick=watch)

    (job,) = session.jobs.values()
    assert job.state == "done" and job.imported, (job.state, job.message, job.import_error)
    assert max(steps_seen) == STEPS and len(steps_seen) >= 2            # progress moved
    # The live preview landed in an image datablock, with real pixels.
    image = bpy.data.images[job.image_name]
    assert image.size[0] > 0
    pixels = np.empty(image.size[0] * image.size[1] * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    assert np.ptp(pixels.reshape(-1, 4)[:, :3]) > 0.05
    # The live coarse mesh was in the viewport while training, and is gone now.
    assert proxies_seen and not any(bpy.data.objects.get(name) for name in proxies_seen)
    # The result: a mesh with UVs and a material whose base color comes from an image texture,
    # named after the prompt, at the 3D cursor, selected and active.
    obj = bpy.data.objects[job.object_names[0]]
    assert obj.name == "a red cube" and obj.type == "MESH" and len(obj.data.vertices) > 0
    assert len(obj.data.uv_layers) >= 1
    assert obj.material_slots and image_texture_feeds_base_color(obj.material_slots[0].material)
    assert tuple(obj.location) == pytest.approx(tuple(scene.cursor.location))
    assert obj.select_get() and bpy.context.view_layer.objects.active == obj
    # The panel shows a healthy backend and the preview (its icon id stays 0 without a window).
    log = draw_panel()
    assert f"Backend {__version__} on" in labels(log) and "Preview: a red cube" in labels(log)
    assert any(entry[0] == "icon" for entry in log)
    # The history lists the job, and re-importing it brings in a second copy.
    tick_until(lambda: any(s["job_id"] == job.job_id for s in session.history))
    assert bpy.ops.distill3d.import_job(job_id=job.job_id, wait=True) == {"FINISHED"}
    assert len([o for o in bpy.data.objects if o.type == "MESH"]) == 2
    # History rows show a thumbnail of each finished job's preview: here the live preview image...
    history = draw_panel("DISTILL3D_PT_history")
    assert ("label", "", images_icon(job.image_name)) in history
    # ...and in a fresh session (another Blender, say) the backend's preview.png, fetched once.
    session = connect(backend.port)
    thumbnail = addon_module("images").thumbnail_name(job.job_id)
    tick_until(lambda: bpy.data.images.get(thumbnail) is not None)
    assert bpy.data.images[thumbnail].size[0] > 0
    assert ("label", "", images_icon(thumbnail)) in draw_panel("DISTILL3D_PT_history")


@pytest.mark.slow
def test_scripted_generate_blocks_and_places_variations_side_by_side(scene, backend):
    connect(backend.port)
    result = bpy.ops.distill3d.generate(prompt="a blue sphere", preset="tiny", steps=STEPS, variations=2, seed=0,
                                        live_mesh=False, extra=FAST, wait=True, timeout=JOB_TIMEOUT_S)
    assert result == {"FINISHED"}  # it returned only once both meshes were in the scene
    meshes = sorted((o for o in bpy.data.objects if o.type == "MESH"), key=lambda o: o.location.x)
    assert [o.name for o in meshes] == ["a blue sphere (seed 0)", "a blue sphere (seed 1)"]
    size = scene.distill3d.size  # 1 m by default
    gap = addon_module("placement").ROW_GAP
    assert meshes[1].location.x - meshes[0].location.x == pytest.approx(size * (1 + gap))  # in a row along +X
    assert meshes[0].location.y == meshes[1].location.y and meshes[0].location.z == meshes[1].location.z
    assert tuple(meshes[0].location) == pytest.approx(tuple(scene.cursor.location))
    for obj in meshes:
        assert max(obj.dimensions) == pytest.approx(size, rel=1e-4) and tuple(obj.scale) == (1, 1, 1)


@pytest.mark.slow
def test_failed_job_shows_the_backends_message(scene, backend):
    session = connect(backend.port)
    with pytest.raises(RuntimeError, match="failed: .*zebra"):  # the shapes prior knows no zebras
        bpy.ops.distill3d.generate(prompt="a zebra on a bicycle", preset="tiny", steps=2, wait=True)
    (job,) = session.jobs.values()
    assert job.state == "failed" and "zebra" in job.message
    text = labels(draw_panel())
    assert "Failed: " in text and "zebra" in text.split("Failed: ", 1)[1]


@pytest.mark.slow
def test_cancel_from_blender(scene, backend):
    session = connect(backend.port)
    assert bpy.ops.distill3d.generate(prompt="a green torus", preset="tiny", steps=100_000, extra=FAST) == {"FINISHED"}
    tick_until(lambda: session.jobs and all(j.state == "running" for j in session.jobs.values()))
    assert ("operator", "distill3d.cancel") in draw_panel()
    assert bpy.ops.distill3d.cancel() == {"FINISHED"}
    tick_until(lambda: all(j.state == "cancelled" for j in session.jobs.values()))
    assert not [o for o in bpy.data.objects if o.type == "MESH" and "torus" in o.name and "training" not in o.name]
    assert "Cancelled" in labels(draw_panel())


def test_backend_not_running_is_a_clear_status_not_an_exception(scene):
    port = free_port_pair()
    session = connect(port, timeout_s=0.5)
    tick_until(lambda: session.backend == "unreachable", timeout_s=30)
    address = f"tcp://127.0.0.1:{port}"
    assert address in session.backend_message
    log = draw_panel()
    assert address in labels(log)
    assert ("operator", "distill3d.start_backend") in log
    # The panel's Generate does not raise: the error comes back through the session...
    assert bpy.ops.distill3d.generate(prompt="a red cube") == {"FINISHED"}
    tick_until(lambda: session.last_error, timeout_s=30)
    assert address in session.last_error and "start" in session.last_error
    # ...while a script asking to wait gets an exception it can act on.
    with pytest.raises(RuntimeError, match="127.0.0.1"):
        bpy.ops.distill3d.generate(prompt="a red cube", wait=True)


@pytest.mark.slow
def test_backend_killed_mid_job(scene, tmp_path):
    doomed = Backend(tmp_path)
    try:
        session = connect(doomed.port, timeout_s=1.0)
        sync = addon_module("sync")
        original = sync.tick

        def tick_and_kill():  # the blocking call drives sync.tick: kill the backend once the job runs
            delay = original()
            if any(j.state == "running" for j in session.jobs.values()) and doomed.process.poll() is None:
                doomed.process.kill()
            return delay
        # A blocking call whose backend dies fails with a message instead of waiting forever.
        sync.tick = tick_and_kill
        try:
            with pytest.raises(RuntimeError, match="stopped answering"):
                bpy.ops.distill3d.generate(prompt="a red cube", preset="tiny", steps=100_000, extra=FAST, wait=True)
        finally:
            sync.tick = original
        (job,) = session.jobs.values()
        assert job.lost_contact and session.backend == "unreachable"
        # The timer keeps running without raising, and the panel says what happened.
        assert bpy.app.timers.is_registered(sync.tick)
        for _ in range(5):
            sync.tick()
        text = labels(draw_panel())
        assert "stopped answering" in text and f"tcp://127.0.0.1:{doomed.port}" in text
    finally:
        doomed.stop()


def test_version_mismatch_says_what_to_update(scene):
    """A backend speaking a newer protocol (a bare ROUTER socket answering with another version)."""
    import zmq

    port = free_port_pair()
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()

    def answer():
        while not stop.is_set():
            if router.poll(50):
                identity, *frames = router.recv_multipart()
                request = json.loads(frames[-1])
                reply = {"v": PROTOCOL_VERSION + 1, "id": request.get("id"), "ok": True, "result": {}}
                router.send_multipart([identity, b"", json.dumps(reply).encode()])
    thread = threading.Thread(target=answer)
    thread.start()
    try:
        session = connect(port, timeout_s=1.0)
        tick_until(lambda: session.backend == "mismatch", timeout_s=30)
        text = labels(draw_panel())
        assert "speaks protocol" in text and "update the Blender add-on" in text  # the older side
    finally:
        addon_module("sync").reset_session()
        stop.set()
        thread.join()
        router.close()
        context.term()


def test_start_backend_explains_a_missing_python(scene):
    p = prefs()
    p.python_path, p.backend_path = "", ""
    with pytest.raises(RuntimeError, match="Backend Python"):
        bpy.ops.distill3d.start_backend()
    p.python_path = str(Path(BLENDER_HOME, "no-such-python"))
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.distill3d.start_backend()
    p.property_unset("python_path")
    assert not addon_module("launcher").running()


def test_start_backend_finds_the_python_of_a_checkouts_venv(scene, tmp_path):
    """With only "Backend folder" set, the backend runs on the Python of the venv in that checkout, made
    the way build.py makes it (the venv module; shared/checkout.py says where)."""
    (tmp_path / "backend").mkdir()
    with pytest.raises(addon_module("launcher").LaunchError, match="Backend Python"):  # no venv yet
        addon_module("launcher").command("", str(tmp_path), 5555)
    venv.create(tmp_path / ".venv", with_pip=False, symlinks=True)
    command = addon_module("launcher").command("", str(tmp_path), 5555)
    assert Path(command[0]).is_file() and Path(command[0]).parent.parent == tmp_path / ".venv"
    assert command[1:] == ["-m", "backend", "serve", "--port", "5555"]


@pytest.mark.slow
def test_start_backend_then_disable_leaves_nothing_running(scene, tmp_path):
    """Start backend from the panel; disabling the add-on then stops that process, removes the timer,
    closes every socket and ends every thread; enabling it again works."""
    port = free_port_pair()
    p = prefs()
    p.python_path, p.backend_path, p.data_dir = sys.executable, str(ROOT), str(tmp_path)
    session = connect(port)
    assert bpy.ops.distill3d.start_backend() == {"FINISHED"}
    process = addon_module("launcher")._process
    assert process is not None and process.poll() is None
    tick_until(lambda: session.backend == "ok", timeout_s=120)
    ports = {port, port + 1}
    tick_until(lambda: len(tcp_connections(ports)) >= 2, timeout_s=10)  # commands + events are connected
    tick = addon_module("sync").tick
    assert bpy.app.timers.is_registered(tick) and zmq_threads()

    assert bpy.ops.preferences.addon_disable(module=ADDON) == {"FINISHED"}
    assert process.poll() is not None  # our backend was stopped
    assert not bpy.app.timers.is_registered(tick)
    assert not [t for t in threading.enumerate() if t.name == "distill3d-requests"]
    deadline = time.monotonic() + 5  # the kernel may take a moment to tear a closed connection down
    while (tcp_connections(ports) or zmq_threads()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tcp_connections(ports) == [] and zmq_threads() == []

    assert bpy.ops.preferences.addon_enable(module=ADDON) == {"FINISHED"}
    assert bpy.app.timers.is_registered(addon_module("sync").tick)
    assert addon_module("sync").current() is None  # nothing connects until it is needed


def test_method_options_reach_the_request_only_when_changed(scene):
    """The panel's method options come from shared/schema.py; only changed ones are sent, and the
    protocol accepts what is sent."""
    from shared.protocol import validate_request

    props = addon_module("props")
    settings = scene.distill3d
    settings.method = "fsd"
    assert "method_options" not in props.requests(settings)[0]  # all at the schema's defaults
    settings.theta = 90.0
    (request,) = props.requests(settings)
    assert request["method_options"] == {"theta": 90.0}
    validate_request(request)
    settings.method = "sds"  # theta is FSD's: not sent for SDS
    assert "method_options" not in props.requests(settings)[0]
    settings.anneal_after = 200  # 0 in the panel is the schema's null ("never")
    assert props.requests(settings)[0]["method_options"] == {"anneal_after": 200}
    for name in ("theta", "anneal_after"):
        settings.property_unset(name)


def test_the_session_follows_the_preferences(scene):
    """No update callbacks: a changed address, timeout or key means fresh sockets at the next use."""
    sync = addon_module("sync")
    first = connect(free_port_pair(), timeout_s=0.5)
    assert sync.session() is first  # nothing changed
    prefs().timeout = 0.7
    second = sync.session()
    assert second is not first and second.timeout_s == pytest.approx(0.7)
    assert not first.thread.alive  # the old session's thread (and sockets) are gone
    prefs().client_public_key = "x"
    assert sync.session() is not second and sync.session().connection.keys.client_public == "x"
    prefs().client_public_key = ""
