"""The panel's settings (stored in the scene, so they are saved with the .blend) and how they become a
job request (shared/protocol.py REQUEST_FIELDS names, checked there by the backend).

Advanced numbers use 0 (or an unticked box) for "the preset's / the method's default", so a preset
change is never silently overridden by a stale number.
"""
# No `from __future__ import annotations`: `argument` reads the settings' properties from the class's
# annotations, which must stay property objects, not strings.
import json
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import selection
from .shared import schema
from .shared.protocol import REQUEST_FIELDS

# EnumProperty items (identifier, label, description) of the schema's methods and presets.
METHOD_ITEMS = [(name, method.label, method.description) for name, method in schema.METHODS.items()]
PRESET_ITEMS = [(name, preset.label, preset.description) for name, preset in schema.PRESETS.items()]

# The panel settings a job request is made from (`requests`). bpy.ops.distill3d.generate takes each
# as an argument too (`argument`), which replaces the panel's value for that call.
REQUEST_SETTINGS = ("prompt", "negative", "method", "preset", "variations", "steps", "resolution", "seed", "prior",
                    "preview_every", "mesh_resolution", "texture_size", "live_mesh", "normal_map", "mesh_denoise", "extra",
                    "source", "shape_strength")

# The method options the panel offers (Advanced > <METHOD> settings). Everything about each one (type,
# default, range, choices, description, which methods have it) is read from shared/schema.py; one
# property serves every method that has the option. Only values that differ from the schema's
# default are sent, so the backend's own defaults stay in charge.
PANEL_OPTIONS = ("weighting", "anneal_after", "inversion_cfg", "entropy", "inversion_steps", "beta", "theta")


def _option(name: str) -> tuple[schema.Field, tuple[str, ...]]:
    """The schema's spec of method option `name`, and the methods that have it."""
    methods = tuple(m for m, method in schema.METHODS.items() if name in method.options)
    specs = {schema.METHODS[m].options[name] for m in methods}
    assert len(specs) == 1, f"{name} differs between {methods}: give it one panel property per method"
    return specs.pop(), methods


METHOD_OPTIONS: dict[str, tuple[schema.Field, tuple[str, ...]]] = {name: _option(name) for name in PANEL_OPTIONS}


def _option_property(name: str, spec: schema.Field):
    """A Blender property for a schema option: its type, default, range and tooltip. An option whose
    default is null ("off") shows as 0."""
    label = name.replace("_", " ").capitalize().replace("cfg", "CFG")
    description = spec.help[:1].upper() + spec.help[1:] + (" (0: off)" if spec.nullable else "")
    if spec.choices:
        items = [(c, c.upper() if c in schema.METHODS else c.capitalize(), "") for c in spec.choices]
        return EnumProperty(name=label, items=items, default=spec.default, description=description)
    default = 0 if spec.default is None else spec.default
    kind = IntProperty if spec.kind == "int" else FloatProperty
    return kind(name=label, default=default, min=spec.low, max=spec.high, description=description)


def _limits(name: str) -> dict[str, Any]:
    """min/max of a request field, from the protocol's table (the one source of the ranges)."""
    spec = REQUEST_FIELDS[name]
    return {"min": spec.low, "max": spec.high}


class BadSettings(ValueError):
    """Settings that cannot become a request; the message says how to fix them."""


class Distill3DSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to make, e.g. \"a red cube\"", default="a red cube")
    negative: StringProperty(name="Negative", description="What to avoid (empty: the method's default; NFSD "
                             "has its own)", default="")
    method: EnumProperty(name="Method", items=METHOD_ITEMS, default=schema.DEFAULT_METHOD,
                         description="Score distillation method")
    preset: EnumProperty(name="Quality", items=PRESET_ITEMS, default=schema.DEFAULT_PRESET,
                         description="Quality preset")
    variations: IntProperty(name="Variations", min=1, max=16, default=1,
                            description="Make this many seeds of the prompt, placed side by side")
    live_mesh: BoolProperty(name="Live mesh", default=True,
                            description="Show a rough mesh in the viewport while training")
    size: FloatProperty(name="Size", default=1.0, min=0.001, soft_max=100.0, unit="LENGTH",
                        description="The result's size in the scene: metres across its largest side, standing "
                                    "on the 3D cursor")
    # Starting from the selection (selection.py, docs/selection.md)
    source: EnumProperty(name="Source", items=selection.SOURCES, default="NEW",
                         description="Make a new object, or start from the active mesh object")
    texture_target: EnumProperty(name="Texture", items=selection.TEXTURE_TARGETS, default="OBJECT",
                                 description="Where the baked texture goes")
    shape_strength: FloatProperty(name="Shape strength", default=REQUEST_FIELDS["shape_strength"].default,
                                  soft_max=10.0, **_limits("shape_strength"),
                                  description=REQUEST_FIELDS["shape_strength"].help.capitalize())

    # Advanced: 0 / off = the preset's or method's value.
    steps: IntProperty(name="Steps", default=0, soft_max=20000, description="Optimisation steps (0: preset)",
                       min=0, max=int(REQUEST_FIELDS["steps"].high))
    resolution: IntProperty(name="Resolution", default=0, min=0, max=int(REQUEST_FIELDS["resolution"].high),
                            description="Render size in pixels while training (0: preset); a preset with coarse_fraction starts at half of it")
    use_cfg: BoolProperty(name="Guidance", default=False, description="Set the guidance scale (off: the prior's default, 1 for shapes, else the method's)")
    cfg: FloatProperty(name="CFG", default=7.5, soft_min=0.0, soft_max=100.0, **_limits("cfg"),
                       description="Classifier-free guidance scale")
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed (variations use seed, seed+1, ...)")
    prior: StringProperty(name="Model", default=REQUEST_FIELDS["prior"].default,
                          description="\"shapes\" (the built-in prior) or a Stable Diffusion model id or folder")
    preview_every: IntProperty(name="Preview every", default=0, min=0, soft_max=500,
                               description="Steps between previews (0: backend default)")
    mesh_resolution: IntProperty(name="Mesh resolution", default=0, min=0,
                                 max=int(REQUEST_FIELDS["mesh_resolution"].high),
                                 description="Marching cubes grid size (0: preset)")
    texture_size: IntProperty(name="Texture size", default=0, min=0, max=int(REQUEST_FIELDS["texture_size"].high),
                              description="Baked texture size in pixels (0: preset)")
    normal_map: BoolProperty(name="Normal map (low poly)", default=REQUEST_FIELDS["normal_map"].default,
                             description=REQUEST_FIELDS["normal_map"].help[:1].upper()
                             + REQUEST_FIELDS["normal_map"].help[1:])
    mesh_denoise: BoolProperty(name="Flat faces, sharp edges", default=REQUEST_FIELDS["mesh_denoise"].default,
                               description=REQUEST_FIELDS["mesh_denoise"].help[:1].upper()
                               + REQUEST_FIELDS["mesh_denoise"].help[1:])
    extra: StringProperty(name="Extra", default="",
                          description="More request settings as JSON, e.g. {\"lr\": 0.05} (names: shared/PROTOCOL.md)")
    # Method-specific options: added below from the schema (METHOD_OPTIONS).


for _name, (_spec, _) in METHOD_OPTIONS.items():
    Distill3DSettings.__annotations__[_name] = _option_property(_name, _spec)


def argument(name: str):
    """The panel setting `name` as an operator argument: the same property (type, range, items,
    tooltip), not remembered between calls, so one left out takes the panel's value."""
    panel = Distill3DSettings.__annotations__[name]
    return panel.function(**{**panel.keywords, "options": {"SKIP_SAVE"}})


def method_options(settings: Distill3DSettings) -> dict[str, Any]:
    """The method-specific settings the user changed from the schema's defaults."""
    chosen = {}
    for prop, (spec, methods) in METHOD_OPTIONS.items():
        value = getattr(settings, prop)
        default = 0 if spec.default is None else spec.default
        # Blender stores floats in single precision: compare with a tolerance, not ==.
        changed = abs(value - default) > 1e-6 if spec.kind == "float" else value != default
        if settings.method in methods and changed:
            chosen[prop] = value
    return chosen


def extra_settings(text: str) -> dict[str, Any]:
    """The "Extra" JSON object of further request fields ({} when empty)."""
    if not text.strip():
        return {}
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadSettings(f"Extra settings are not valid JSON ({error.msg} at character {error.pos}): write "
                          "e.g. {\"lr\": 0.05}") from None
    if not isinstance(extra, dict):
        raise BadSettings("Extra settings must be a JSON object of setting names and values, e.g. {\"lr\": 0.05}")
    return extra


def _source_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The request fields of a job that starts from the selection (none for a new object)."""
    source = selection.REQUEST_SOURCE[values["source"]]
    if source == "new":
        return {}
    if int(values["variations"]) > 1:
        raise BadSettings("Variations make new objects only: set Variations to 1 to texture or reshape the "
                          "selected object")
    if source == "texture":  # the object itself is in the viewport: no live mesh on top of it
        return {"source": source, "coarse_mesh_every": 0}
    strength = float(values["shape_strength"])
    default = REQUEST_FIELDS["shape_strength"].default
    return {"source": source, **({"shape_strength": strength} if abs(strength - default) > 1e-6 else {})}


def requests(settings: Distill3DSettings, **override: Any) -> list[dict[str, Any]]:
    """One job request per variation (seed, seed + 1, ...). `override` replaces panel values (scripts)."""
    values = {name: getattr(settings, name) for name in REQUEST_SETTINGS}
    values["cfg"] = settings.cfg if settings.use_cfg else None
    values.update({k: v for k, v in override.items() if v is not None})
    request: dict[str, Any] = {"prompt": values["prompt"].strip(), "method": values["method"],
                               "preset": values["preset"],
                               "prior": values["prior"].strip() or REQUEST_FIELDS["prior"].default}
    if values["negative"].strip():
        request["negative"] = values["negative"].strip()
    if values["cfg"] is not None:
        request["cfg"] = float(values["cfg"])
    for name in ("steps", "resolution", "preview_every", "mesh_resolution", "texture_size"):
        if values[name]:
            request[name] = int(values[name])
    if not values["live_mesh"]:
        request["coarse_mesh_every"] = 0
    request.update(_source_settings(values))
    if values["normal_map"]:
        request["normal_map"] = True
    if values["mesh_denoise"] != REQUEST_FIELDS["mesh_denoise"].default:
        request["mesh_denoise"] = values["mesh_denoise"]
    options = method_options(settings) if values["method"] == settings.method else {}
    if options:
        request["method_options"] = options
    request.update(extra_settings(values["extra"]))  # the backend checks every name and value
    seed = int(values["seed"])
    return [{**request, "seed": seed + i} for i in range(max(1, int(values["variations"])))]


CLASSES = (Distill3DSettings,)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.distill3d = PointerProperty(type=Distill3DSettings)


def unregister() -> None:
    del bpy.types.Scene.distill3d
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
