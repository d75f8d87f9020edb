"""Distill3D backend: text -> NeRF by score distillation -> textured mesh.

Python API (the same as the CLI):

    import backend
    result = backend.generate("a red cube", method="fsd", steps=800, out="results/cube")
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


def distill_image(prompt: str, method: str = "sds", steps: int = 500, resolution: int = 64, prior=None,
                  cfg: float | None = None, seed: int = 0, **options):
    """The papers' 2D experiment: optimise one image with a method; returns [3, H, W] in [0, 1]."""
    from .image import distill_prompt_image

    return distill_prompt_image(prompt, method=method, steps=steps, resolution=resolution, prior=prior, cfg=cfg,
                                seed=seed, options=options)
