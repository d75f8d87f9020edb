"""What a user can choose: the score distillation methods with their options, and the quality presets.

This is the one place these facts live. The backend's methods (backend/methods), the run settings
(backend/config.py), the protocol (shared/protocol.py), the CLI help and the Blender panel read them
from here; tests/test_schema.py fails if any of them disagrees.

A `Field` describes one setting: its type (`kind`), default, range (`low`..`high`), allowed strings
(`choices`) and a one-line `help`. The protocol's request fields are `Field`s too, checked by the same
`check_value`.

Like the rest of shared/, this module imports without torch or numpy and uses relative imports only
(the add-on build copies shared/ into the add-on).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any


class SettingError(ValueError):
    """A value a setting does not accept. `field` names the setting; the message says what to give."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


@dataclass(frozen=True)
class Field:
    kind: str                          # "str" | "int" | "float" | "bool" | "options" (a name -> scalar map)
    default: Any
    low: float | None = None           # numbers: the smallest allowed value
    high: float | None = None          # numbers: the largest allowed value
    choices: tuple[str, ...] | None = None
    pattern: str | None = None         # a regular expression the whole string must match
    nullable: bool = False             # None is allowed (it means "the method's / automatic default")
    required: bool = False
    max_length: int = 256
    wire: bool = True                  # run settings only: False for local paths a client may not send
    help: str = ""


def show_number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def show(value: Any) -> str:
    """A value for an error message, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_OPTIONS = 32  # entries of an "options" map


def check_value(name: str, spec: Field, value: Any) -> Any:
    """`value` if it fits `spec` (ints given for floats become floats), else SettingError naming `name`.
    An "options" map is checked for its shape only (names, scalar values); what the names mean is
    check_method_options' and check_prior_options' business."""
    if spec.kind == "options":
        return _check_options(name, value)
    if value is None:
        if spec.nullable:
            return None
        raise SettingError(f"{name} must not be null: leave it out to get its default", name)
    if spec.kind in ("int", "float"):
        integer = spec.kind == "int"
        kind = "a whole number" if integer else "a number"
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
            raise SettingError(f"{name} must be {kind} from {show_number(spec.low)} to {show_number(spec.high)}, got {show(value)}",
                               name)
        if not spec.low <= value <= spec.high:
            raise SettingError(f"{name} = {show(value)} is out of range: use {kind} from {show_number(spec.low)} "
                               f"to {show_number(spec.high)}", name)
        return value if integer else float(value)
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise SettingError(f"{name} must be true or false, got {show(value)}", name)
        return value
    if spec.kind == "str":
        if not isinstance(value, str):
            raise SettingError(f"{name} must be a string, got {show(value)}", name)
        if len(value) > spec.max_length:
            raise SettingError(f"{name} is {len(value)} characters long: shorten it to at most {spec.max_length}",
                               name)
        if spec.choices is not None and value not in spec.choices:
            raise SettingError(f"{name} = {show(value)} is not allowed: use one of "
                               f"{', '.join(map(repr, spec.choices))}", name)
        if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
            raise SettingError(f"{name} {show(value)} is not valid: {spec.help or 'see shared/PROTOCOL.md'}", name)
        if spec.required and not value.strip():
            raise SettingError(f'the {name} is empty: give a description, e.g. "a red cube"', name)
        return value
    raise AssertionError(f"{name}: check_value does not check the {spec.kind!r} kind")


def _check_options(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SettingError(f"{name} must be a mapping of option name to value", name)
    if len(value) > MAX_OPTIONS:
        raise SettingError(f"{name} has {len(value)} entries: at most {MAX_OPTIONS} are allowed", name)
    for key, item in value.items():
        if not _OPTION_NAME.fullmatch(key):
            raise SettingError(f"{name} has a bad option name {show(key)}: use letters, digits and _", name)
        scalar = isinstance(item, (bool, int, str)) or (isinstance(item, float) and math.isfinite(item))
        if not scalar or (isinstance(item, str) and len(item) > 256) or (isinstance(item, int) and abs(item) > 2**63):
            raise SettingError(f"{name}.{key} must be a finite number, a short string or true/false, "
                               f"got {show(item)}", f"{name}.{key}")
    return dict(value)


# ------------------------------------------------------------------------------------------------
# Methods. Every schedule is written for the 1000 training timesteps of Stable Diffusion: t options
# are fractions of them. The equations behind each option are in docs/methods.md.

@dataclass(frozen=True)
class Method:
    name: str
    label: str                         # short name for menus
    description: str                   # one line: the CLI help, the panel's tooltip, describe_methods
    options: dict[str, Field]          # what the user may set, with the authors' defaults


def _cfg(default: float) -> Field:
    return Field("float", default, -1000.0, 1000.0,
                 help="classifier-free guidance scale s in e_0 + s (e_y - e_0)")


_WEIGHTING = Field("str", "sds", choices=("sds", "uniform"),
                   help="w(t) of the gradient: sds = 1 - abar_t (DreamFusion), uniform = 1")
_STEP = 10**9  # upper bound of a step number

# SDS and NFSD share the random timestep schedule t ~ U{T t_min .. T t_max}. Fractions of t stop at
# 0.999: the last timestep is 999.
_T_HIGH = 0.999
_RANDOM_T = {
    "t_min": Field("float", 0.02, 0.0, _T_HIGH, help="smallest t, as a fraction of the 1000 timesteps"),
    "t_max": Field("float", 0.98, 0.0, _T_HIGH, help="largest t, as a fraction of the 1000 timesteps"),
    "anneal_after": Field("int", None, 0, _STEP, nullable=True,
                          help="from this step on, t is at most anneal_t_max"),
    "anneal_t_max": Field("float", 0.5, 0.0, _T_HIGH, help="largest t from step anneal_after on"),
    "weighting": _WEIGHTING,
}


def _decreasing_t(t_end: float) -> dict[str, Field]:
    """SDI and FSD walk t down linearly from t_start to t_end over the run."""
    return {"t_start": Field("float", 0.98, 0.0, _T_HIGH, help="t at the first step, a fraction of 1000"),
            "t_end": Field("float", t_end, 0.0, _T_HIGH, help="t at the last step (at most t_start)")}


METHODS: dict[str, Method] = {
    "sds": Method("sds", "SDS", "Score Distillation Sampling (DreamFusion): random t, fresh noise, CFG 100; "
                  "the baseline",
                  {"cfg": _cfg(100.0), **_RANDOM_T}),
    "nfsd": Method("nfsd", "NFSD", "Noise-Free Score Distillation: SDS without the noise residual, using a "
                   "negative prompt instead of the noise term; CFG 7.5",
                   {"cfg": _cfg(7.5), **_RANDOM_T}),
    "sdi": Method("sdi", "SDI", "Score Distillation via Inversion: DDIM-inverts each render instead of adding "
                  "random noise; CFG 7.5, slower: up to inversion_steps + 1 extra prior calls a step",
                  {"cfg": _cfg(7.5),
                   "inversion_cfg": Field("float", -7.5, -1000.0, 1000.0,
                                          help="guidance on the DDIM inversion (negative, as in the SDI paper)"),
                   "entropy": Field("float", 0.3, 0.0, 10.0, help="noise added on each inversion step (SDI eq. 11)"),
                   **_decreasing_t(0.25),
                   "inversion_steps": Field("int", 10, 1, 100,
                                            help="steps of the DDIM inversion grid over the 1000 timesteps")}),
    "fsd": Method("fsd", "FSD", "Flow Score Distillation: decreasing t and camera-fixed world-map noise, a "
                  "DDIM-like flow; CFG 7.5, different seeds give different results",
                  {"cfg": _cfg(7.5), **_decreasing_t(0.02),
                   "beta": Field("float", 1.0, 0.0, 1.0, help="1: camera-fixed noise only; 0: fresh noise like SDS"),
                   "theta": Field("float", 180.0, 15.0, 360.0,
                                  help="degrees of view one noise patch spans (sets the world-map size)"),
                   "weighting": _WEIGHTING}),
}
DEFAULT_METHOD = "sds"


def method_spec(name: str) -> Method:
    """The method called `name`, or SettingError listing the methods."""
    if name not in METHODS:
        raise SettingError(f"unknown method {show(name)}: use one of {', '.join(METHODS)}", "method")
    return METHODS[name]


def check_method_options(method: str, options: dict[str, Any], where: str = "method_options") -> dict[str, Any]:
    """`options` of `method` checked against its schema (names, types, ranges); ints given for floats
    become floats. Checks that involve two options (e.g. t_end <= t_start) are the method's own."""
    spec = method_spec(method)
    unknown = sorted(str(key) for key in options if key not in spec.options)
    if unknown:
        known = ", ".join(f"{k} (default {v.default!r})" for k, v in spec.options.items())
        raise SettingError(f"{method} has no option(s) {', '.join(unknown)}: its options are {known}",
                           f"{where}.{unknown[0]}")
    checked = {}
    for key, value in options.items():
        try:
            checked[key] = check_value(f"{method} option {key}", spec.options[key], value)
        except SettingError as error:
            raise SettingError(error.message, f"{where}.{key}") from None
    return checked


def method_defaults(method: str) -> dict[str, Any]:
    """option -> default of `method`."""
    return {name: option.default for name, option in method_spec(method).options.items()}


# ------------------------------------------------------------------------------------------------
# Prior options: what a run may set on a Stable Diffusion prior (the run setting prior_options). The
# built-in shapes prior takes none. backend/priors/stable_diffusion.py takes its defaults from here.

SD_OPTIONS: dict[str, Field] = {
    "perp_neg": Field("bool", False, help="Perp-Neg view guidance (needs view_dependent)"),
    "latent_mode": Field("str", "vae", choices=("vae", "rgb"),
                         help="vae: VAE-encoded 512 px renders (exact); rgb: the render resized to the latent size "
                              "(cheap)"),
    "attention_slicing": Field("bool", False, help="less memory for the UNet's attention, slower"),
    "vae_tiling": Field("bool", False, help="encode the render in tiles: less memory, slower"),
    "cpu_offload": Field("bool", False, help="keep the text encoder on the CPU"),
    "cuda_graphs": Field("bool", True, help="replay the UNet and VAE calls from CUDA graphs on a GPU"),
    "vae_channels_last": Field("bool", False, help="run the VAE encoder channels-last"),
}


def check_prior_options(options: dict[str, Any]) -> dict[str, Any]:
    """Stable Diffusion `options` checked against SD_OPTIONS, or SettingError naming the first bad one."""
    unknown = sorted(str(key) for key in options if key not in SD_OPTIONS)
    if unknown:
        raise SettingError(f"unknown prior option(s) {', '.join(unknown)}: Stable Diffusion takes "
                           f"{', '.join(SD_OPTIONS)}", f"prior_options.{unknown[0]}")
    checked = {}
    for key, value in options.items():
        try:
            checked[key] = check_value(f"prior option {key}", SD_OPTIONS[key], value)
        except SettingError as error:
            raise SettingError(error.message, f"prior_options.{key}") from None
    return checked


# ------------------------------------------------------------------------------------------------
# Run settings: everything one run (a `generate` job) can set. backend/config.py GenerateConfig is built
# from this table, the protocol's request fields are the ones with wire=True, and the CLI, the panel and
# shared/PROTOCOL.md read it. None defaults (nullable) are filled in by GenerateConfig.resolved() or mean
# "automatic", as each help says.

_N = 1_000_000  # upper bound for step counts
SHAPES_PRIOR = "shapes"  # the built-in exact prior's name (backend/priors/shapes.py)

RUN_FIELDS: dict[str, Field] = {
    "prompt": Field("str", None, required=True, max_length=1000, help="what to generate"),
    "method": Field("str", DEFAULT_METHOD, choices=tuple(METHODS), help="distillation method"),
    "prior": Field("str", SHAPES_PRIOR, max_length=512, pattern=r"[^\x00-\x1f]+",
                   help=f'"{SHAPES_PRIOR}" (built-in exact prior) or a diffusers model id / folder'),
    "negative": Field("str", None, nullable=True, max_length=1000, help="negative prompt; null: method default"),
    "steps": Field("int", 800, 1, _N, help="optimisation steps"),
    "resolution": Field("int", 64, 8, 1024, help="render height = width, pixels"),
    "coarse_fraction": Field("float", 0.0, 0.0, 1.0,
                             help="share of the steps rendered at half the resolution first (coarse to fine); 0: none"),
    "cfg": Field("float", None, -1000.0, 1000.0, nullable=True,
                 help="guidance scale; null: the prior's default (1 for shapes), else the method's"),
    "seed": Field("int", 0, 0, 2**63 - 1),
    "method_options": Field("options", {}, help="the method's options, name -> value (shared/schema.py METHODS)"),
    "device": Field("str", "auto", pattern=r"auto|cpu|cuda(:[0-9]{1,2})?", help="auto, cpu, cuda or cuda:N"),
    "view_dependent": Field("bool", True, help='append "front view" etc. to the prompt'),
    "offline": Field("bool", False, help="never touch the network when loading a model"),
    "prior_options": Field("options", {}, help=f"Stable Diffusion options: {', '.join(SD_OPTIONS)}"),
    "lr": Field("float", 0.01, 1e-8, 10.0, help="Adam learning rate of the field (docs/methods.md, the NeRF side)"),
    "background_lr": Field("float", 0.001, 0.0, 10.0, help="Adam learning rate of the background"),
    "batch_size": Field("int", 1, 1, 64, help="views rendered per step"),
    "lambda_orientation": Field("float", 10.0, 0.0, 1e6,
                                help="orientation loss weight, ramped to lambda_orientation_end over orientation_ramp_steps"),
    "lambda_orientation_end": Field("float", 1000.0, 0.0, 1e6),
    "orientation_ramp_steps": Field("int", 5000, 0, _N),
    "lambda_sparsity": Field("float", 0.0, 0.0, 1e6),
    "albedo_steps": Field("int", None, 0, _N, nullable=True,
                          help="albedo-only shading for the first steps; null: 20% of the steps"),
    "textureless_prob": Field("float", 0.5, 0.0, 1.0),
    "random_background_prob": Field("float", 0.5, 0.0, 1.0, help="chance of a random solid background in a step"),
    "max_samples_per_ray": Field("int", 512, 8, 4096),
    "occupancy_resolution": Field("int", 32, 8, 256),
    "occupancy_every": Field("int", 16, 1, _N),
    "hash_levels": Field("int", 16, 1, 32),
    "hash_log2_table": Field("int", 19, 10, 24),
    "hash_levels_start": Field("int", 8, 1, 32, help="progressive levels: active at first, more as training goes"),
    "hash_levels_every": Field("int", None, 1, _N, nullable=True,
                               help="steps between level switch-ons; null: scaled from threestudio's 500 of 10000"),
    "hash_levels_after": Field("int", None, 0, _N, nullable=True,
                               help="first level switch-on; null: scaled from threestudio's 2000 of 10000"),
    "preview_every": Field("int", 50, 0, _N, help="steps between previews; 0: none"),
    "checkpoint_every": Field("int", 200, 0, _N, help="steps between checkpoints; 0: none"),
    "coarse_mesh_every": Field("int", 0, 0, _N, help="steps between live meshes; 0: off; left out: the server's"),
    "export_mesh": Field("bool", True, help="export the textured mesh at the end"),
    "mesh_resolution": Field("int", 256, 16, 512, help="marching-cubes grid per side"),
    "texture_size": Field("int", 1024, 16, 8192),
    "face_budget": Field("int", 50_000, 100, 10_000_000),
    "mesh_threshold": Field("float", None, 0.0, 1e6, nullable=True,
                            help="density level of the exported surface; null: chosen from the field's renders"),
    "mesh_smooth": Field("bool", True, help="light Taubin smoothing: fewer UV charts and seams"),
    "mesh_denoise": Field("bool", True, help="feature-preserving smoothing (guided normal filtering): flat "
                                             "faces come out flat and edges stay sharp"),
    "normal_map": Field("bool", False, help="bake the full surface's normals into a tangent-space normal map "
                                             "for the decimated mesh (game-ready low poly)"),
    "source": Field("str", "new", choices=("new", "texture", "shape"),
                    help="new: from nothing; texture: paint the given mesh; shape: grow from the given mesh"),
    "fit": Field("str", "auto", choices=("auto", "none"),
                 help="auto: centre and scale the given mesh to the cameras' box; none: keep its coordinates"),
    "shape_strength": Field("float", 1.0, 0.0, 1e4, help="weight of the shape guide loss (source shape)"),
    "shape_decay_steps": Field("int", None, 0, _N, nullable=True,
                               help="steps over which the shape guide fades to 0; null: the whole run"),
    "source_mesh": Field("str", None, nullable=True, max_length=4096, wire=False,
                         help="the mesh file (.glb/.obj) of source texture/shape; the server stores uploads here"),
}

# ------------------------------------------------------------------------------------------------
# Quality presets: values for the run settings (shared/protocol.py REQUEST_FIELDS names); a setting a
# preset leaves out takes its default there.

@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)


# The CPU-sized presets use a 2^16 hash table (the simple shapes need no more, and Adam over the full
# 2^19 x 16 levels table would dominate a CPU step) and march 128 samples across the cube's diagonal
# (about one per pixel footprint at 64 px) instead of 512. Draft renders its first coarse_fraction of
# the steps at half its resolution: a sharp rim's outline needs the finer pixels, and the coarse steps
# pay for them (docs/quality.md, "Coarse to fine, the draft since 2026-12-04").
PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", "Tiny", "Seconds on a CPU: checks that everything works, the shape is rough",
                   dict(steps=40, resolution=32, mesh_resolution=64, texture_size=128, occupancy_resolution=16,
                        hash_log2_table=14, hash_levels=8, hash_levels_start=4, max_samples_per_ray=64,
                        face_budget=5000)),
    "draft": Preset("draft", "Draft", "A first look, sized for a CPU: 1000 steps, 48 px then 96 px, 128^3 mesh",
                    dict(steps=1000, resolution=96, coarse_fraction=0.7, mesh_resolution=128, texture_size=512,
                         hash_log2_table=16, max_samples_per_ray=128)),
    "standard": Preset("standard", "Standard", "3000 steps, 256^3 mesh, 1024 px texture",
                       dict(steps=3000, resolution=64, mesh_resolution=256, texture_size=1024)),
    "high": Preset("high", "High", "10000 steps at 128 px, 2048 px texture: best quality, needs a GPU",
                   dict(steps=10000, resolution=128, mesh_resolution=256, texture_size=2048)),
}
DEFAULT_PRESET = "draft"


def preset_spec(name: str) -> Preset:
    """The preset called `name`, or SettingError listing the presets."""
    if name not in PRESETS:
        raise SettingError(f"unknown preset {show(name)}: use one of {', '.join(PRESETS)}", "preset")
    return PRESETS[name]
