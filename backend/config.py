"""Settings of one run, built from the one table that declares them, and their validation.

`GenerateConfig` is generated from shared/schema.py RUN_FIELDS (name, type, default; ranges and help
stay there), so the CLI, the Python API, the server, batch and the Blender panel all see one set of
settings. The same dataclass is saved in every checkpoint and report, so a run can be resumed or
repeated exactly.

A GenerateConfig checks itself when it is built (`__post_init__`) and is frozen, so every one that
exists is valid: each boundary (the protocol, the CLI, a batch spec, a stored request) builds one
once, and everything past it passes that config on without checking again (docs/design.md, section 6).
A changed copy (`dataclasses.replace`) is built, so it is checked too.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, field, fields, make_dataclass, replace
from typing import Any

from shared.protocol import ProtocolError, validate_request
from shared.schema import RUN_FIELDS, Field, SettingError, preset_spec

from .errors import UserError

_PYTHON_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "options": dict}


class _RunSettings:
    """The behaviour of GenerateConfig; its fields come from RUN_FIELDS (below)."""

    def resolved(self) -> "GenerateConfig":
        """A copy with every 'auto' default filled in from the step count."""
        fraction = lambda f: max(1, int(round(f * self.steps)))  # noqa: E731
        return replace(
            self,
            albedo_steps=fraction(0.2) if self.albedo_steps is None else self.albedo_steps,
            hash_levels_every=fraction(0.05) if self.hash_levels_every is None else self.hash_levels_every,
            hash_levels_after=fraction(0.2) if self.hash_levels_after is None else self.hash_levels_after,
        )

    def __post_init__(self) -> None:
        """Raise UserError naming the first bad field and its allowed range."""
        try:
            validate_request(self.to_dict(), RUN_FIELDS)
        except ProtocolError as error:
            raise UserError(error.message, error.field) from None
        self._check_source()

    def _check_source(self) -> None:
        if self.source != "new" and not self.source_mesh:
            raise UserError(f"source {self.source!r} needs a mesh: give its file (.glb or .obj) as source_mesh "
                            "(--shape MESH, or `python -m backend texture MESH`)", "source_mesh")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerateConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown setting(s) {', '.join(unknown)}: known settings are {', '.join(sorted(known))}",
                            unknown[0])
        return cls(**data)


def _dataclass_field(name: str, spec: Field) -> tuple:
    kind = _PYTHON_TYPES[spec.kind]
    annotation = kind | None if spec.nullable else kind
    if spec.kind == "options":
        return name, annotation, field(default_factory=dict)
    return name, annotation, field(default=MISSING if spec.required else spec.default)


GenerateConfig = make_dataclass(
    "GenerateConfig", [_dataclass_field(name, spec) for name, spec in RUN_FIELDS.items()], bases=(_RunSettings,),
    frozen=True, namespace={"__doc__": "One run's settings: the fields of shared/schema.py RUN_FIELDS, with their defaults.",
               "__module__": __name__})


def with_preset(preset: str, **overrides: Any) -> GenerateConfig:
    """A config from a named quality preset (shared/schema.py PRESETS), then explicit overrides (None
    values are ignored)."""
    try:
        settings = preset_spec(preset).settings
    except SettingError as error:
        raise UserError(error.message, error.field) from None
    return GenerateConfig(**{**settings, **{k: v for k, v in overrides.items() if v is not None}})

