"""The papers' 2D experiments: optimise one image x directly in the prior's space with a method.

x itself is the "3D model" (d x / d theta = I). Each method has its own 2D optimiser (`OPTIMIZERS_2D`):
FSD takes the step sizes of its paper's Proposition 1 and then follows the DDIM trajectory of its noise
(how close it comes to DDIM from the same noise is measured in docs/methods.md);
SDI takes its authors' Adam settings; SDS and NFSD take Adam at lr 0.03. `compare_2d` runs several
methods and DDIM from one seed. What each method reaches is measured in docs/methods.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .cameras import front_camera
from .devices import resolve_device
from .errors import UserError
from .methods import METHOD_CLASSES, GradientOutput, Method, ddim_sample, gradient_loss, guidance_scale, make_method
from .methods.base import weight
from .priors.base import Prior, View

DEFAULT_LR = 0.03  # Adam on the image: enough to follow t from 980 to 20 within a few hundred steps


@dataclass(frozen=True)
class Optimizer2D:
    """How distill_image updates x. "adam": torch Adam with these settings. "flow": plain gradient
    descent with the step of the FSD paper's Proposition 1 (eq. 12-13), for FSD only:
        x <- x - h_k g_k,   h_k = (sigma(t_k) - sigma(t_{k+1})) / w(t_k),   sigma(t) = s_t / a_t,
    and sigma = 0 after the last step, so that with g = w(t)(e_s(z_t, t) - eps) each step is one
    Euler step of the probability-flow ODE in sigma, i.e. one DDIM step from t_k to t_{k+1}."""
    kind: str = "adam"                       # "adam" | "flow"
    lr: float = DEFAULT_LR
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


# Each method's 2D optimiser (docs/methods.md, "2D"). SDI: its authors' Adam (threestudio
# configs/sdi.yaml: lr 0.01, betas (0.9, 0.99), eps 1e-15). FSD: Proposition 1's steps.
OPTIMIZERS_2D: dict[str, Optimizer2D] = {
    "sds": Optimizer2D(), "nfsd": Optimizer2D(), "fsd": Optimizer2D("flow"),
    "sdi": Optimizer2D(lr=0.01, betas=(0.9, 0.99), eps=1e-15)}


def optimizer_2d(method: Method, optimizer: str | None = None, lr: float | None = None) -> Optimizer2D:
    """The method's 2D optimiser, or "adam" / "flow" as asked, with `lr` for Adam when given."""
    default = OPTIMIZERS_2D.get(method.name, Optimizer2D())
    if optimizer is None:
        chosen = default
    elif optimizer == "adam":
        chosen = default if default.kind == "adam" else Optimizer2D()
    elif optimizer == "flow":
        chosen = Optimizer2D("flow")
    else:
        raise UserError(f"unknown 2D optimizer {optimizer!r}: use 'adam' or 'flow'")
    if chosen.kind == "flow" and method.name != "fsd":
        raise UserError(f"the 'flow' optimizer needs FSD's fixed noise and decreasing t; {method.name} "
                        "uses 'adam'")
    if lr is not None:
        if chosen.kind == "flow":
            raise UserError("the 'flow' optimizer has no learning rate (its steps come from the schedule): "
                            "drop lr or use optimizer='adam'")
        chosen = Optimizer2D("adam", lr, chosen.betas, chosen.eps)
    return chosen


def flow_step(prior: Prior, method: Method, step: int) -> float:
    """h_k = (sigma(t_k) - sigma(t_{k+1})) / w(t_k), sigma = s / a, sigma = 0 after the last step
    (FSD paper, Proposition 1, eq. 12-13, discretised on the method's own t schedule)."""
    def sigma(t: int) -> float:
        abar = float(prior.schedule.alphas_cumprod[t])
        return ((1.0 - abar) / abar) ** 0.5
    t_now = method.timestep(step)
    t_next = method.timestep(step + 1) if step + 1 < method.max_steps else None
    w = weight(prior.schedule, t_now, method.weighting, torch.zeros((), dtype=torch.float64))
    return (sigma(t_now) - (sigma(t_next) if t_next is not None else 0.0)) / float(w)


def image_view(prior: Prior, device: torch.device | str = "cpu") -> View:
    """The single view of a 2D experiment: the fixed front camera, a white background, fully opaque."""
    size = prior.render_resolution
    cameras = front_camera(size, size, device=device)
    return View(cameras=cameras, shading="albedo", light_positions=cameras.positions.clone(),
                background=torch.ones(1, 3, size, size, device=device),
                opacity=torch.ones(1, 1, size, size, device=device))


def distill_image(prior: Prior, method: Method, steps: int | None = None, view: View | None = None,
                  lr: float | None = None, init: torch.Tensor | None = None,
                  on_step: Callable[[int, torch.Tensor, GradientOutput], None] | None = None,
                  optimizer: str | None = None) -> torch.Tensor:
    """Optimise x [B, C, h, w] (from `init`, or one image of zeros) for `steps` steps (default: the
    method's max_steps; the method's schedule is stretched to `steps`) with the method's 2D optimiser
    (OPTIMIZERS_2D), or `optimizer` ("adam" / "flow") and `lr` (Adam) when given. The prior's prompts
    must already be set. on_step(step, x, output) is called after every update. Returns x, detached."""
    if steps is not None:
        method.max_steps = steps
    device = view.opacity.device if view is not None else (init.device if init is not None else "cpu")
    view = view if view is not None else image_view(prior, device)
    settings = optimizer_2d(method, optimizer, lr)
    x = init.detach().clone() if init is not None else torch.zeros(1, *prior.latent_shape, device=device)
    x.requires_grad_(True)
    adam = (torch.optim.Adam([x], lr=settings.lr, betas=settings.betas, eps=settings.eps)
            if settings.kind == "adam" else None)
    method.setup(prior)
    for step in range(method.max_steps):
        out = method.gradient(x.detach(), step, view)
        if adam is None:
            with torch.no_grad():
                x -= flow_step(prior, method, step) * out.grad
        else:
            adam.zero_grad(set_to_none=True)
            gradient_loss(x, out.grad).backward()
            adam.step()
        if on_step is not None:
            on_step(step, x.detach(), out)
    return x.detach()


def compare_2d(prior: Prior, methods: Sequence[str] = tuple(METHOD_CLASSES), steps: int = 500, seed: int = 0,
               lr: float | None = None, cfg: dict[str, float] | None = None, ddim_steps: int = 50,
               device: torch.device | str = "cpu", prompt: str | None = None,
               negative: str | None = None, optimizer: str | None = None) -> dict[str, torch.Tensor]:
    """Each method (authors' defaults, or cfg[name]; its 2D optimiser, or `optimizer` / `lr`) and DDIM
    ("ddim", CFG 7.5) from one seed: name -> x [1, C, h, w]. DDIM starts from the noise FSD uses for
    the front camera, so FSD and DDIM can be compared (Proposition 1). With `prompt`, the prior's prompts are set for each method
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
        results[name] = distill_image(prior, method, steps, view, lr, optimizer=optimizer)
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
    device = resolve_device(device)
    the_prior = load_image_prior(prior, resolution, device)
    the_method = make_method(method, guidance_scale(cfg, options, the_prior), options, max_steps=steps, seed=seed)
    the_prior.set_prompts(prompt, negative if negative is not None else the_method.default_negative,
                          view_dependent=False)
    x = distill_image(the_prior, the_method, steps, image_view(the_prior, device))
    return the_prior.decode(x)[0]


def compare_methods(prompt: str, prior: Prior | str | None = None, steps: int = 500, resolution: int = 64,
                    seed: int = 0, device: torch.device | str = "cpu", methods: Sequence[str] = tuple(METHOD_CLASSES),
                    negative: str | None = None) -> np.ndarray:
    """Every method and DDIM from one seed, decoded side by side (`python -m backend compare`), each
    labelled with its RMS distance per value to the DDIM sample of the same noise (FSD's should be
    about 0; docs/methods.md)."""
    from .pictures import grid

    device = resolve_device(device)
    the_prior = load_image_prior(prior, resolution, device)
    results = compare_2d(the_prior, methods, steps, seed, device=device, prompt=prompt, negative=negative)
    images = [the_prior.decode(x)[0] for x in results.values()]
    labels = [name if name == "ddim" else f"{name} to ddim {rms_distance(x, results['ddim']):.3f}"
              for name, x in results.items()]
    scale = max(1, 256 // images[0].shape[-1])
    return grid(images, labels=labels, scale=scale)


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """sqrt(mean((a - b)^2)): a distance that does not grow with the image size."""
    return float((a.double() - b.double()).pow(2).mean().sqrt())
