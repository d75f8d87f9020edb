"""The Blender add-on, for real: the built extension zip installed into headless Blender (PyPI bpy) the
way Blender installs extensions, talking over loopback ZeroMQ to a real backend subprocess running
the built-in "shapes" prior at the "tiny" preset with a few steps.

Blender's user folders are pointed at a temporary folder before bpy is imported, so the test never
touches the real ~/.config/blender.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BLENDER_HOME = tempfile.mkdtemp(prefix="distill3d-blender-")
atexit.register(shutil.rmtree, BLENDER_HOME, ignore_errors=True)
os.environ.setdefault("BLENDER_USER_RESOURCES", BLENDER_HOME)  # before bpy is imported
bpy = pytest.importorskip("bpy")

from shared.client import Client, ServerUnreachable  # noqa: E402  (the repo's own copy, for setup only)
from shared.version import PROTOCOL_VERSION, __version__  # noqa: E402
from shared.ports import free_port_pair

REPO = "user_default"
ADDON = f"bl_ext.{REPO}.distill3d"
# The tiny preset with a smaller field, a larger step size and a small face budget: 20 steps then
# grow a surface that the export accepts (with the default lr the field stays below the density
# threshold for hundreds of steps, and the backend rightly refuses to export), and unwrapping the
# few faces is quick (a noisy 50k-face mesh takes xatlas ~30 s). The tests check plumbing, not quality.
STEPS = 20
FAST = json.dumps({"resolution": 24, "hash_log2_table": 12, "hash_levels": 8, "hash_levels_start": 4,
                   "max_samples_per_ray": 64, "lr": 0.2, "face_budget": 2000})
JOB_TIMEOUT_S = 600.0  # generous: the CI machine is shared


# ----- helpers -------------------------------------------------------------------------------------



class Backend:
    """`python -m backend serve` on a free loopback port with its own data folder."""

    def __init__(self, tmp: Path):
        self.port = free_port_pair()
        self.log = tmp / f"backend-{self.port}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "backend", "serve", "--port", str(self.port), "--data-dir", str(tmp / "data"),
                 "--preview-interval", "0", "--coarse-mesh-every", "10"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 120
        with Client(f"tcp://127.0.0.1:{self.port}", timeout_s=1.0) as client:
            while True:
                try:
                    client.info()
                    return
                except ServerUnreachable:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"the backend did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def addon_module(name: str = ""):
    return sys.modules[f"{ADDON}.{name}" if name else ADDON]


def prefs():
    return bpy.context.preferences.addons[ADDON].preferences


def connect(port: int, timeout_s: float = 2.0):
    """Point the add-on at `port` and start from a fresh session."""
    p = prefs()
    p.port, p.timeout = port, timeout_s
    sync = addon_module("sync")
    sync.reset_session()
    return sync.session()


def tick_until(done, timeout_s: float = JOB_TIMEOUT_S, on_tick=None):
    """Drive the add-on's timer callback (as Blender's timer would) until done() is true."""
    sync = addon_module("sync")
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out driving the add-on's timer"
        sync.tick()
        if on_tick is not None:
            on_tick()
        time.sleep(0.02)


class FakeLayout:
    """Records what a panel draws (bpy's UILayout cannot be made without a window)."""

    def __init__(self, log: list):
        self.log = log

    def _child(self, *args, **kwargs) -> "FakeLayout":
        return FakeLayout(self.log)

    box = column = row = split = _child

    def label(self, text="", icon="NONE", **kwargs):
        self.log.append(("label", text))

    def prop(self, data, name, **kwargs):
        self.log.append(("prop", name))

    def operator(self, idname, **kwargs):
        self.log.append(("operator", idname))
        return types.SimpleNamespace()

    def progress(self, factor=0.0, type="BAR", text=""):
        self.log.append(("progress", factor, text))

    def template_icon(self, icon_value=0, scale=1.0):
        self.log.append(("icon", icon_value))


def draw_panel() -> list:
    """What the main sidebar panel shows right now."""
    log: list = []
    addon_module("panel").DISTILL3D_PT_main.draw(types.SimpleNamespace(layout=FakeLayout(log)), bpy.context)
    return log


def labels(log) -> str:
    """The panel's text, wrapped lines joined back with spaces."""
    return " ".join(entry[1] for entry in log if entry[0] == "label")


def tcp_connections(ports: set[int]) -> list[str]:
    """This process's established TCP connections to `ports` on loopback (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        remote_port = int(parts[2].split(":")[1], 16)
        if parts[3] == "01" and parts[9] in inodes and remote_port in ports:
            found.append(line)
    return found


def zmq_threads() -> list[str]:
    """ZeroMQ's background threads in this process: one set per open zmq.Context."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:
            continue
    return [n for n in names if n.startswith("ZMQbg")]


def image_texture_feeds_base_color(material) -> bool:
    """True if an Image Texture node with pixels is upstream of the Principled BSDF's Base Color."""
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    todo, seen = [bsdf.inputs["Base Color"]], set()
    while todo:
        socket_ = todo.pop()
        for link in socket_.links:
            node = link.from_node
            if node.type == "TEX_IMAGE" and node.image is not None and node.image.size[0] > 0:
                return True
            if node.name not in seen:
                seen.add(node.name)
                todo.extend(node.inputs)
    return False


# ----- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def addon_zip() -> Path:
    """`python3 build.py addon` (its package step): the zip users install."""
    done = subprocess.run([sys.executable, "-m", "blender_addon.package"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return ROOT / "dist" / f"distill3d-{__version__}.zip"


@pytest.fixture(scope="module")
def addon(addon_zip):
    assert bpy.utils.user_resource("EXTENSIONS").startswith(os.environ["BLENDER_USER_RESOURCES"])
    result = bpy.ops.extensions.package_install_files(filepath=str(addon_zip), repo=REPO, enable_on_install=True)
    assert result == {"FINISHED"}
    assert ADDON in bpy.context.preferences.addons
    yield addon_module()
    bpy.ops.preferences.addon_disable(module=ADDON)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    server = Backend(tmp_path_factory.mktemp("backend"))
    yield server
    server.stop()


@pytest.fixture
def scene(addon):
    """A clean scene with the panel's settings reset, the 3D cursor somewhere off the origin."""
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    settings = bpy.context.scene.distill3d
    for name in ("prompt", "negative", "method", "preset", "variations", "steps", "resolution", "seed",
                 "mesh_resolution", "texture_size", "preview_every", "live_mesh", "extra"):
        settings.property_unset(name)
    bpy.context.scene.cursor.location = (1.0, -2.0, 0.5)
    yield bpy.context.scene
    addon_module("sync").reset_session()


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
    assert "shared/client.py" in names and "__init__.py" in names and "package.py" not in names
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


@pytest.mark.slow
def test_scripted_generate_blocks_and_places_variations_side_by_side(scene, backend):
    connect(backend.port)
    result = bpy.ops.distill3d.generate(prompt="a blue sphere", preset="tiny", steps=STEPS, variations=2, seed=0,
                                        live_mesh=False, extra=FAST, wait=True, timeout=JOB_TIMEOUT_S)
    assert result == {"FINISHED"}  # it returned only once both meshes were in the scene
    meshes = sorted((o for o in bpy.data.objects if o.type == "MESH"), key=lambda o: o.location.x)
    assert [o.name for o in meshes] == ["a blue sphere (seed 0)", "a blue sphere (seed 1)"]
    spacing = addon_module("importer").SPACING
    assert meshes[1].location.x - meshes[0].location.x == pytest.approx(spacing)
    assert tuple(meshes[0].location) == pytest.approx(tuple(scene.cursor.location))


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
