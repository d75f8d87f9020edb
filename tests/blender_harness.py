"""What the Blender tests share: headless Blender (PyPI bpy 5.0.1) with the built extension zip installed
the way Blender installs extensions, a real backend subprocess on loopback, and ways to drive and
read the add-on as Blender would (its timer callback, its panel's draw).

Blender's user folders are pointed at a temporary folder before bpy is imported, so the tests never
touch the real ~/.config/blender. Not a test module: test modules import what they use from here.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BLENDER_HOME = tempfile.mkdtemp(prefix="distill3d-blender-")
atexit.register(shutil.rmtree, BLENDER_HOME, ignore_errors=True)
os.environ.setdefault("BLENDER_USER_RESOURCES", BLENDER_HOME)  # before bpy is imported
bpy = pytest.importorskip("bpy")

from shared.client import Client, ServerUnreachable  # noqa: E402  (the repo's own copy, for setup only)
from shared.ports import free_port_pair  # noqa: E402
from shared.version import __version__  # noqa: E402

REPO = "user_default"
ADDON = f"bl_ext.{REPO}.distill3d"
# The tiny preset with a smaller field, a larger step size and a small face budget: 20 steps then
# grow a surface that the export accepts (with the default lr the field stays below the density
# threshold for hundreds of steps, and the backend rightly refuses to export), and unwrapping the
# few faces is quick (a noisy 50k-face mesh takes xatlas ~30 s). The tests check plumbing, not quality.
STEPS = 20
FAST = json.dumps({"resolution": 24, "hash_log2_table": 12, "hash_levels": 8, "hash_levels_start": 4,
                   "max_samples_per_ray": 64, "face_budget": 2000})
JOB_TIMEOUT_S = 600.0  # generous: the CI machine is shared


# ----- helpers -------------------------------------------------------------------------------------

class Backend:
    """`python -m backend serve` on a free loopback port with its own data folder. With `keys` (the
    files of shared.keys.generate_keys) it requires CurveZMQ keys, as a backend on another machine does."""

    def __init__(self, tmp: Path, *args: str, keys: dict | None = None, coarse_mesh_every: int = 10):
        self.port = free_port_pair()
        self.log = tmp / f"backend-{self.port}.log"
        key_args = [] if keys is None else ["--server-key", str(keys["server_secret"]),
                                            "--authorized-keys", str(keys["authorized"])]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "backend", "serve", "--port", str(self.port), "--data-dir", str(tmp / "data"),
                 "--preview-interval", "0", "--coarse-mesh-every", str(coarse_mesh_every), *key_args, *args],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 120
        client_keys = {} if keys is None else {"server_public_key": keys["server_public"],
                                               "client_keys": keys["client_secret"]}
        with Client(f"tcp://127.0.0.1:{self.port}", timeout_s=1.0, **client_keys) as client:
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


def connect(port: int, timeout_s: float = 2.0, keys: tuple[str, str, str] = ("", "", "")):
    """Point the add-on at `port` (with these keys: server public, client public, client secret) and
    start from a fresh session."""
    p = prefs()
    p.port, p.timeout = port, timeout_s
    p.server_key, p.client_public_key, p.client_secret_key = keys
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

    def label(self, text="", icon="NONE", icon_value=None, **kwargs):
        self.log.append(("label", text) if icon_value is None else ("label", text, icon_value))

    def prop(self, data, name, **kwargs):
        self.log.append(("prop", name))

    def operator(self, idname, **kwargs):
        self.log.append(("operator", idname))
        return types.SimpleNamespace()

    def progress(self, factor=0.0, type="BAR", text=""):
        self.log.append(("progress", factor, text))

    def template_icon(self, icon_value=0, scale=1.0):
        self.log.append(("icon", icon_value))


def draw_panel(panel: str = "DISTILL3D_PT_main") -> list:
    """What a sidebar panel (the main one unless named) shows right now."""
    log: list = []
    getattr(addon_module("panel"), panel).draw(types.SimpleNamespace(layout=FakeLayout(log)), bpy.context)
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


# ----- fixtures (a test module imports the ones it uses) ---------------------------------------------

@functools.cache
def built_zip() -> Path:
    """`python3 build.py addon` (its build step): the zip users install. Built once per test run."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "build_addon.py")], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return ROOT / "dist" / f"distill3d-{__version__}.zip"


def install_addon() -> types.ModuleType:
    """Install the built zip into the throwaway extensions repository (once) and enable it."""
    if ADDON not in sys.modules:
        assert bpy.utils.user_resource("EXTENSIONS").startswith(os.environ["BLENDER_USER_RESOURCES"])
        result = bpy.ops.extensions.package_install_files(filepath=str(built_zip()), repo=REPO,
                                                          enable_on_install=True)
        assert result == {"FINISHED"}
    if ADDON not in bpy.context.preferences.addons:
        assert bpy.ops.preferences.addon_enable(module=ADDON) == {"FINISHED"}
    return addon_module()


@pytest.fixture(scope="module")
def addon_zip() -> Path:
    return built_zip()


@pytest.fixture(scope="module")
def addon():
    yield install_addon()
    bpy.ops.preferences.addon_disable(module=ADDON)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    server = Backend(tmp_path_factory.mktemp("backend"))
    yield server
    server.stop()


def clear_scene() -> None:
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    for mesh in list(bpy.data.meshes):
        if mesh.users == 0:
            bpy.data.meshes.remove(mesh)


@pytest.fixture
def scene(addon):
    """A clean scene with the panel's settings reset, the 3D cursor somewhere off the origin."""
    clear_scene()
    settings = bpy.context.scene.distill3d
    for name in ("prompt", "negative", "method", "preset", "variations", "steps", "resolution", "seed",
                 "mesh_resolution", "texture_size", "preview_every", "live_mesh", "extra", "size"):
        settings.property_unset(name)
    bpy.context.scene.cursor.location = (1.0, -2.0, 0.5)
    yield bpy.context.scene
    addon_module("sync").reset_session()


# ----- pictures rendered by Blender (tests/test_blender_render.py, bench/render_in_blender.py) ----------

def stage(objects, size_px: int = 192, samples: int = 16):
    """A camera framing `objects` (from the front-left, a little above, as Blender's front view faces
    +Y), a sun, a soft grey world, and Cycles on the CPU with a transparent film (alpha = the objects)."""
    from mathutils import Vector

    scene = bpy.context.scene
    corners = [obj.matrix_world @ Vector(c) for obj in objects for c in obj.bound_box]
    low = Vector([min(c[i] for c in corners) for i in range(3)])
    high = Vector([max(c[i] for c in corners) for i in range(3)])
    centre, radius = (low + high) / 2, (high - low).length / 2
    camera = bpy.data.objects.get("Distill3D test camera")
    if camera is None:
        camera = bpy.data.objects.new("Distill3D test camera", bpy.data.cameras.new("Distill3D test camera"))
        scene.collection.objects.link(camera)
    direction = Vector((-0.55, -1.0, 0.45)).normalized()
    half_fov = camera.data.angle / 2
    camera.location = centre + direction * (radius / np.sin(half_fov) * 1.05)
    camera.rotation_euler = (-direction).to_track_quat("-Z", "Y").to_euler()
    scene.camera = camera
    sun = bpy.data.objects.get("Distill3D test sun")
    if sun is None:
        sun = bpy.data.objects.new("Distill3D test sun", bpy.data.lights.new("Distill3D test sun", "SUN"))
        scene.collection.objects.link(sun)
    sun.data.energy = 3.0
    sun.rotation_euler = Vector((-0.4, -0.6, 1.0)).normalized().to_track_quat("Z", "Y").to_euler()
    if scene.world is None:
        scene.world = bpy.data.worlds.new("Distill3D test world")
    background = next(n for n in scene.world.node_tree.nodes if n.type == "BACKGROUND")
    background.inputs["Color"].default_value = (0.4, 0.4, 0.4, 1.0)
    background.inputs["Strength"].default_value = 1.0
    render = scene.render
    render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    render.film_transparent = True
    render.resolution_x = render.resolution_y = size_px
    render.resolution_percentage = 100
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGBA"
    return camera


def render_png(path: Path, visible) -> np.ndarray:
    """Render the scene with only `visible` of the meshes showing; the picture as uint8 [H, W, 4]."""
    from PIL import Image

    for obj in bpy.context.scene.objects:
        if obj.type == "MESH":
            obj.hide_render = obj not in visible
    scene = bpy.context.scene
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return np.asarray(Image.open(path).convert("RGBA"))


def surface_texture_color(obj) -> np.ndarray:
    """The mean RGB (0..1, sRGB) the texture gives the surface: the image feeding the base colour,
    looked up at every face corner's UV (the texture's unused atlas space does not count)."""
    material = obj.material_slots[0].material
    image = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE" and n.image is not None).image
    width, height = image.size
    pixels = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(pixels)  # row 0 at the bottom, like Blender's v = 0
    pixels = pixels.reshape(height, width, 4)
    uv = np.empty(2 * len(obj.data.loops), np.float32)
    obj.data.uv_layers.active.data.foreach_get("uv", uv)
    uv = np.clip(uv.reshape(-1, 2), 0.0, 1.0)
    x = np.minimum((uv[:, 0] * width).astype(int), width - 1)
    y = np.minimum((uv[:, 1] * height).astype(int), height - 1)
    return pixels[y, x, :3].mean(axis=0)


def silhouette_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap of two renders' alpha masks (intersection over union)."""
    mask_a, mask_b = a[..., 3] > 127, b[..., 3] > 127
    return float((mask_a & mask_b).sum() / max(1, (mask_a | mask_b).sum()))


def generate_and_render(tmp: Path, prompt: str, steps: int, size_px: int = 192, samples: int = 16) -> dict:
    """The whole artist's path in headless Blender: a backend, Generate (wait=True) on the shapes prior
    at the tiny preset with the live mesh on, and Cycles renders, from one camera, of the imported
    object and of a copy of the live mesh taken at the first mesh event past half the steps."""
    server = Backend(tmp, coarse_mesh_every=max(1, steps // 6))
    try:
        connect(server.port, timeout_s=10.0)  # the machine may be busy: answers can take seconds
        clear_scene()
        bpy.context.scene.cursor.location = (0.0, 0.0, 0.0)
        sync = addon_module("sync")
        original_apply, kept = sync.apply, {}

        def apply_and_keep_the_live_mesh(session, updates):  # watches what the timer applies; changes nothing
            original_apply(session, updates)
            for job_id, event in updates.meshes.items():
                live = bpy.data.objects.get(session.jobs[job_id].proxy_name)
                if "live" not in kept and live is not None and event.get("step", 0) >= steps // 2:
                    copy = live.copy()
                    copy.data = live.data.copy()
                    copy.name = f"{prompt} (live mesh, step {event['step']})"
                    bpy.context.scene.collection.objects.link(copy)
                    kept.update(live=copy, step=event["step"])
        sync.apply = apply_and_keep_the_live_mesh
        try:
            result = bpy.ops.distill3d.generate(prompt=prompt, preset="tiny", steps=steps, extra=FAST, live_mesh=True,
                                                wait=True, timeout=JOB_TIMEOUT_S)
        finally:
            sync.apply = original_apply
        assert result == {"FINISHED"}
        final = bpy.data.objects[prompt]
        assert "live" in kept, "no live mesh arrived past half the steps"
        stage([final, kept["live"]], size_px, samples)
        bpy.context.scene.view_settings.view_transform = "Standard"  # colours as the texture has them
        return {"final": final, "live": kept["live"], "live_step": kept["step"],
                "final_png": render_png(tmp / "final.png", [final]),
                "live_png": render_png(tmp / "live.png", [kept["live"]])}
    finally:
        addon_module("sync").reset_session()
        server.stop()
