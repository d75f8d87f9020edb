"""The papers' 2D experiments: optimise one image x directly in the prior's space with a method.

With x itself as the "3D model" (d x / d theta = I), FSD with fixed noise follows DDIM's trajectory
of that noise (FSD paper, Proposition 1) and SDI behaves like DDIM (SDI paper, Fig. 1), while SDS is
blurry at CFG 7.5 and over-saturated at 100. `compare_2d` runs several methods and DDIM from one seed.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .cameras import front_camera
from .devices import resolve_device
from .methods import METHODS, GradientOutput, Method, ddim_sample, gradient_loss, make_method
from .priors.base import Prior, View

DEFAULT_LR = 0.03  # Adam on the image: enough to follow t from 980 to 20 within a few hundred steps


def image_view(prior: Prior, device: torch.device | str = "cpu") -> View:
    """The single view of a 2D experiment: the fixed front camera, a white background, fully opaque."""
    size = prior.render_resolution
    cameras = front_camera(size, size, device=device)
    return View(cameras=cameras, shading="albedo", light_positions=cameras.positions.clone(),
                background=torch.ones(1, 3, size, size, device=device),
                opacity=torch.ones(1, 1, size, size, device=device))


def distill_image(prior: Prior, method: Method, steps: int | None = None, view: View | None = None,
                  lr: float = DEFAULT_LR, init: torch.Tensor | None = None,
                  on_step: Callable[[int, torch.Tensor, GradientOutput], None] | None = None) -> torch.Tensor:
    """Optimise x [1, C, h, w] (from `init`, or zeros) with Adam for `steps` steps (default: the method's
    max_steps; the method's schedule is stretched to `steps`). The prior's prompts must already be set.
    on_step(step, x, output) is called after every update. Returns the final x, detached."""
    if steps is not None:
        method.max_steps = steps
    device = view.opacity.device if view is not None else (init.device if init is not None else "cpu")
    view = view if view is not None else image_view(prior, device)
    x = init.detach().clone() if init is not None else torch.zeros(1, *prior.latent_shape, device=device)
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    method.setup(prior)
    for step in range(method.max_steps):
        out = method.gradient(x.detach(), step, view)
        optimizer.zero_grad(set_to_none=True)
        gradient_loss(x, out.grad).backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, x.detach(), out)
    return x.detach()


def compare_2d(prior: Prior, methods: Sequence[str] = tuple(METHODS), steps: int = 500, seed: int = 0,
               lr: float = DEFAULT_LR, cfg: dict[str, float] | None = None, ddim_steps: int = 50,
               device: torch.device | str = "cpu", prompt: str | None = None,
               negative: str | None = None) -> dict[str, torch.Tensor]:
    """Each method (authors' defaults, or cfg[name]) and DDIM ("ddim", CFG 7.5) from one seed:
    name -> x [1, C, h, w]. DDIM starts from the noise FSD uses for the front camera, so FSD and DDIM
    can be compared (Proposition 1). With `prompt`, the prior's prompts are set for each method
    (its default negative prompt unless `negative` is given); without, they must be set already."""
    cfg = cfg or {}
    view = image_view(prior, device)

    def use_prompt(method_negative: str | None) -> None:
        if prompt is not None:
            prior.set_prompts(prompt, negative if negative is not None else method_negative, view_dependent=False)

    results = {}
    for name in methods:
        method = make_method(name, cfg.get(name), max_steps=steps, seed=seed)
        use_prompt(method.default_negative)
        results[name] = distill_image(prior, method, steps, view, lr)
    fsd = make_method("fsd", seed=seed)
    fsd.setup(prior)
    x_T = fsd.noise(torch.zeros(1, *prior.latent_shape, device=device), view)
    use_prompt(None)
    results["ddim"] = ddim_sample(prior, x_T, view, steps=ddim_steps, cfg=cfg.get("ddim", 7.5))
    return results


def load_image_prior(prior: Prior | str | None, resolution: int, device: torch.device | str) -> Prior:
    """A Prior as given, or one loaded by name ("shapes", the default, or a Stable Diffusion id/folder)."""
    if isinstance(prior, Prior):
        return prior
    from .priors import SHAPES, load_prior
    return load_prior(prior or SHAPES, device, resolution=resolution)


def distill_prompt_image(prompt: str, method: str = "sds", steps: int = 500, resolution: int = 64,
                         prior: Prior | str | None = None, cfg: float | None = None, seed: int = 0,
                         options: dict | None = None, negative: str | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """A prompt -> one distilled image [3, H, W] in [0, 1] (backend.distill_image, `python -m backend image`)."""
    the_method = make_method(method, cfg, options, max_steps=steps, seed=seed)
    device = resolve_device(device)
    the_prior = load_image_prior(prior, resolution, device)
    the_prior.set_prompts(prompt, negative if negative is not None else the_method.default_negative,
                          view_dependent=False)
    x = distill_image(the_prior, the_method, steps, image_view(the_prior, device))
    return the_prior.decode(x)[0]


def compare_methods(prompt: str, prior: Prior | str | None = None, steps: int = 500, resolution: int = 64,
                    seed: int = 0, device: torch.device | str = "cpu", methods: Sequence[str] = tuple(METHODS),
                    negative: str | None = None) -> np.ndarray:
    """Every method and DDIM from one seed, decoded and labelled side by side (`python -m backend compare`)."""
    from .pictures import grid

    device = resolve_device(device)
    the_prior = load_image_prior(prior, resolution, device)
    results = compare_2d(the_prior, methods, steps, seed, device=device, prompt=prompt, negative=negative)
    images = [the_prior.decode(x)[0] for x in results.values()]
    scale = max(1, 256 // images[0].shape[-1])
    return grid(images, labels=list(results), scale=scale)
