"""Settings of one generate run, their defaults, and validation with clear errors.

The same dataclass is filled by the CLI, the Python API and the server (from a protocol request), and
is saved in every checkpoint and report so a run can be resumed or repeated exactly. The quality
presets, the methods and their options are shared/schema.py's; the ranges are
shared/protocol.py REQUEST_FIELDS'.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from shared.protocol import ProtocolError, validate_request
from shared.schema import DEFAULT_METHOD, Field, SettingError, check_value, preset_spec

from .errors import UserError


@dataclass
class GenerateConfig:
    prompt: str
    method: str = DEFAULT_METHOD
    prior: str = "shapes"            # "shapes" (built-in exact prior) or a diffusers model id / folder
    negative: str | None = None      # None: the method's default (NFSD's negative prompt for NFSD)
    steps: int = 800
    resolution: int = 64             # render height = width, pixels
    cfg: float | None = None         # None: the prior's default_cfg, else the method's (shared/schema.py)
    seed: int = 0
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"weighting": "uniform"}
    device: str = "auto"             # "auto" | "cpu" | "cuda" | "cuda:N"
    view_dependent: bool = True      # append "front view" etc. to the prompt
    offline: bool = False            # never touch the network when loading a model
    prior_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"perp_neg": True} for Stable Diffusion

    # optimisation (docs/methods.md, the NeRF side)
    lr: float = 0.01
    background_lr: float = 0.001
    batch_size: int = 1
    lambda_orientation: float = 10.0     # ramps to lambda_orientation_end over orientation_ramp_steps
    lambda_orientation_end: float = 1000.0
    orientation_ramp_steps: int = 5000
    lambda_sparsity: float = 0.0
    albedo_steps: int | None = None      # albedo-only shading at first; None: 20% of the steps (2000 of 10000)
    textureless_prob: float = 0.5
    random_background_prob: float = 0.5  # chance of a random solid background in a step
    max_samples_per_ray: int = 512
    occupancy_resolution: int = 32
    occupancy_every: int = 16
    hash_levels: int = 16
    hash_log2_table: int = 19
    hash_levels_start: int = 8            # progressive levels: more switched on as training goes
    hash_levels_every: int | None = None  # None: scaled from threestudio's 500 of 10000 steps
    hash_levels_after: int | None = None  # None: scaled from threestudio's 2000 of 10000 steps

    # outputs
    preview_every: int = 50
    checkpoint_every: int = 200
    coarse_mesh_every: int = 0           # 0: off (the server turns it on for live proxies)
    export_mesh: bool = True
    mesh_resolution: int = 256
    texture_size: int = 1024
    face_budget: int = 50_000
    mesh_threshold: float = 25.0         # density level of the surface (threestudio's 25, for long GPU runs)
    mesh_smooth: bool = True             # light Taubin smoothing: fewer UV charts and seams (bench_export)

    def resolved(self) -> "GenerateConfig":
        """A copy with every 'auto' default filled in from the step count."""
        fraction = lambda f: max(1, int(round(f * self.steps)))  # noqa: E731
        return replace(
            self,
            albedo_steps=fraction(0.2) if self.albedo_steps is None else self.albedo_steps,
            hash_levels_every=fraction(0.05) if self.hash_levels_every is None else self.hash_levels_every,
            hash_levels_after=fraction(0.2) if self.hash_levels_after is None else self.hash_levels_after,
        )

    def validate(self) -> "GenerateConfig":
        """Raise UserError naming the first bad field and its allowed range; return self. The types
        and ranges live once, in shared.protocol.REQUEST_FIELDS, which the server checks too."""
        try:
            validate_request(self.to_dict())
        except ProtocolError as error:
            raise UserError(error.message) from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerateConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown setting(s) {', '.join(unknown)}: known settings are {', '.join(sorted(known))}")
        return cls(**data)


def with_preset(preset: str, **overrides: Any) -> GenerateConfig:
    """A config from a named quality preset (shared/schema.py PRESETS), then explicit overrides (None
    values are ignored)."""
    try:
        settings = preset_spec(preset).settings
    except SettingError as error:
        raise UserError(error.message) from None
    return GenerateConfig(**{**settings, **{k: v for k, v in overrides.items() if v is not None}})


def check_range(name: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    """One number against its range, with the schema's wording (the methods' max_steps and seed)."""
    try:
        check_value(name, Field("int" if integer else "float", None, low, high), value)
    except SettingError as error:
        raise UserError(error.message) from None
