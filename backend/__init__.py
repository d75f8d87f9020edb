"""Distill3D backend: text -> NeRF by score distillation -> textured mesh.

Python API (the same as the CLI):

    import backend
    result = backend.generate("a red cube", method="fsd", steps=800, out="results/cube")
    result = backend.texture("chair.glb", "a red chair", method="fsd", out="results/chair")
    image = backend.distill_image("a blue sphere", method="sdi")

Imports are lazy so that `import backend` stays cheap.
"""
from __future__ import annotations

from shared.version import __version__  # one version for the backend, the protocol and the add-on


def generate(prompt: str, out: str = "results/run", preset: str = "draft", prior=None, on_event=None,
             resume: bool = False, **settings):
    """Text -> trained field, turntable, mesh and report in `out`. `settings` are GenerateConfig
    fields (method, steps, resolution, cfg, seed, negative, ...); `prior` may be a Prior instance
    (your own, see README "Bring your own prior") or None to load config.prior."""
    from .config import with_preset
    from .events import ignore_event
    from .train import train

    config = with_preset(preset, prompt=prompt, **settings)
    return train(config, out, on_event=on_event or ignore_event, prior=prior, resume=resume)


# The texture-mode package (backend/texture/) loads here, before the function below takes its name: a
# package sets itself as an attribute of its parent only when it first loads, so `backend.texture` stays
# the function and `from backend.texture.mesh_input import ...` still works. The package imports nothing heavy.
from . import texture as _texture_package  # noqa: E402,F401


def texture(mesh: str, prompt: str, out: str = "results/texture", preset: str = "draft", prior=None,
            on_event=None, resume: bool = False, **settings):
    """Paint an existing mesh (.glb, .gltf, .obj) from text, geometry kept: texture.png, mesh.glb,
    corner_uv.bin and report.json in `out` (docs/selection.md). `settings` are GenerateConfig fields
    (method, steps, resolution, fit, ...); the render size defaults to 128 px on the CPU, 256 on a GPU."""
    from .texture import TEXTURE_RESOLUTION_CPU, TEXTURE_RESOLUTION_GPU
    from .config import with_preset
    from .devices import resolve_device
    from .events import ignore_event
    from .texture.train_texture import train_texture

    if settings.get("resolution") is None:
        on_cpu = resolve_device(settings.get("device") or "auto").type == "cpu"
        settings["resolution"] = TEXTURE_RESOLUTION_CPU if on_cpu else TEXTURE_RESOLUTION_GPU
    config = with_preset(preset, prompt=prompt, **{**settings, "source": "texture", "source_mesh": str(mesh)})
    return train_texture(config, out, on_event=on_event or ignore_event, prior=prior, resume=resume)


def distill_image(prompt: str, method: str = "sds", steps: int = 500, resolution: int = 64, prior=None,
                  cfg: float | None = None, seed: int = 0, **options):
    """The papers' 2D experiment: optimise one image with a method; returns [3, H, W] in [0, 1]."""
    from .image import distill_prompt_image

    return distill_prompt_image(prompt, method=method, steps=steps, resolution=resolution, prior=prior, cfg=cfg,
                                seed=seed, options=options)
