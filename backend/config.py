"""Settings of one generate run, their defaults, quality presets, and validation with clear errors.

The same dataclass is filled by the CLI, the Python API and the server (from a protocol request), and
is saved in every checkpoint and report so a run can be resumed or repeated exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import UserError

METHOD_NAMES = ("sds", "nfsd", "sdi", "fsd")

# Quality presets: what the Blender panel's draft/standard/high and the CLI's --preset choose.
# "demo" is sized for the 2-core CPU: `python3 build.py demo` finishes in a few minutes.
PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized presets use a 2^16 hash table: the simple shapes need no more, and Adam over the
    # full 2^19 x 16 levels table would dominate a CPU step.
    "tiny": dict(steps=40, resolution=32, mesh_resolution=64, texture_size=128, occupancy_resolution=16,
                 hash_log2_table=14, hash_levels=8, hash_levels_start=4),
    "demo": dict(steps=800, resolution=64, mesh_resolution=128, texture_size=512, hash_log2_table=16),
    "draft": dict(steps=800, resolution=64, mesh_resolution=128, texture_size=512, hash_log2_table=16),
    "standard": dict(steps=3000, resolution=64, mesh_resolution=256, texture_size=1024),
    "high": dict(steps=10000, resolution=128, mesh_resolution=256, texture_size=2048),
}


@dataclass
class GenerateConfig:
    prompt: str
    method: str = "sds"
    prior: str = "shapes"            # "shapes" (built-in exact prior) or a diffusers model id / folder
    negative: str | None = None      # None: the method's default (NFSD's negative prompt for NFSD)
    steps: int = 800
    resolution: int = 64             # render height = width, pixels
    cfg: float | None = None         # None: the method's default (100 for SDS, 7.5 otherwise)
    seed: int = 0
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"weighting": "uniform"}
    device: str = "auto"             # "auto" | "cpu" | "cuda" | "cuda:N"
    view_dependent: bool = True      # append "front view" etc. to the prompt
    offline: bool = False            # never touch the network when loading a model

    # optimisation (METHODS.md, the NeRF side)
    lr: float = 0.01
    background_lr: float = 0.001
    batch_size: int = 1
    lambda_orientation: float = 10.0     # ramps to lambda_orientation_end over orientation_ramp_steps
    lambda_orientation_end: float = 1000.0
    orientation_ramp_steps: int = 5000
    lambda_sparsity: float = 0.0
    albedo_steps: int | None = None      # albedo-only shading at first; None: 20% of the steps (2000 of 10000)
    textureless_prob: float = 0.5
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
        """Raise UserError naming the first bad field and its allowed range; return self."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise UserError("the prompt is empty: give a description, e.g. \"a red cube\"")
        if self.method not in METHOD_NAMES:
            raise UserError(f"unknown method {self.method!r}: use one of {', '.join(METHOD_NAMES)}")
        _range("steps", self.steps, 1, 1_000_000, integer=True)
        _range("resolution", self.resolution, 8, 1024, integer=True)
        if self.cfg is not None:
            _range("cfg", self.cfg, -1000.0, 1000.0)
        _range("seed", self.seed, 0, 2**63 - 1, integer=True)
        _range("lr", self.lr, 1e-8, 10.0)
        _range("background_lr", self.background_lr, 0.0, 10.0)
        _range("batch_size", self.batch_size, 1, 64, integer=True)
        _range("textureless_prob", self.textureless_prob, 0.0, 1.0)
        _range("max_samples_per_ray", self.max_samples_per_ray, 8, 4096, integer=True)
        _range("occupancy_resolution", self.occupancy_resolution, 8, 256, integer=True)
        _range("hash_levels", self.hash_levels, 1, 32, integer=True)
        _range("hash_log2_table", self.hash_log2_table, 10, 24, integer=True)
        _range("preview_every", self.preview_every, 0, 1_000_000, integer=True)
        _range("checkpoint_every", self.checkpoint_every, 0, 1_000_000, integer=True)
        _range("mesh_resolution", self.mesh_resolution, 16, 512, integer=True)  # 1024^3 would need >10 GB
        _range("texture_size", self.texture_size, 16, 8192, integer=True)
        _range("face_budget", self.face_budget, 100, 10_000_000, integer=True)
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise UserError(f"unknown device {self.device!r}: use auto, cpu, cuda or cuda:N")
        if not isinstance(self.method_options, dict):
            raise UserError("method_options must be a mapping of option name to value")
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
    """A config from a named quality preset, then explicit overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return GenerateConfig(**values)


def _range(name: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    kind = "a whole number" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise UserError(f"{name} must be {kind} from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise UserError(f"{name} = {value} is out of range: use {kind} from {low} to {high}")
