"""shared/schema.py is the one source of the methods, their options and the presets: every consumer
(the method classes, the config validation, the protocol, the CLI help and the Blender panel) agrees
with it, and a value the schema refuses is refused everywhere, naming the option."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backend import cli
from backend.config import GenerateConfig, with_preset
from backend.errors import UserError
from backend.methods import METHOD_CLASSES as CLASSES
from backend.methods import describe_methods, make_method
from shared import schema
from shared.protocol import REQUEST_FIELDS, ProtocolError, validate_request

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = [(m, o, spec) for m, method in schema.METHODS.items() for o, spec in method.options.items()
           if spec.kind in ("int", "float")]
# Options checked against each other (t_min <= t_max, t_end <= t_start): set together at a range end.
PARTNERS = {"t_min": "t_max", "t_max": "t_min", "t_start": "t_end", "t_end": "t_start"}


def test_each_method_class_has_the_schema_options_and_defaults():
    assert list(CLASSES) == list(schema.METHODS)
    for name, cls in CLASSES.items():
        assert cls.name == name
        assert cls.options() == schema.method_defaults(name), name
    assert describe_methods() == {name: method.description for name, method in schema.METHODS.items()}


def test_the_guidance_scale_a_description_names_is_the_cfg_default():
    for method in schema.METHODS.values():
        scale = re.search(r"CFG ([0-9.]+)", method.description).group(1)
        assert float(scale) == method.options["cfg"].default, method.name


@pytest.mark.parametrize("method, option, spec", NUMBERS, ids=[f"{m}.{o}" for m, o, _ in NUMBERS])
def test_every_consumer_takes_a_method_option_at_its_range_ends_and_refuses_one_step_beyond(method, option, spec):
    step = 1 if spec.kind == "int" else 1e-3
    for end, beyond in ((spec.low, spec.low - step), (spec.high, spec.high + step)):
        options = {option: end, **({PARTNERS[option]: end} if option in PARTNERS else {})}
        made = make_method(method, options=options, max_steps=10)
        assert getattr(made, option) == end
        assert all(0 <= made.timestep(step) <= 999 for step in (0, 5, 10))  # and a run can use it
        GenerateConfig(prompt="a cube", method=method, method_options=options)
        validate_request({"prompt": "a cube", "method": method, "method_options": options})
        needle = f"{method} option {option} = {beyond!r} is out of range"
        with pytest.raises(UserError, match=needle):
            make_method(method, options={option: beyond})
        with pytest.raises(UserError, match=needle):
            GenerateConfig(prompt="a cube", method=method, method_options={option: beyond})
        with pytest.raises(ProtocolError, match=needle) as error:
            validate_request({"prompt": "a cube", "method": method, "method_options": {option: beyond}})
        assert error.value.field == f"method_options.{option}"


def test_choices_unknown_options_and_options_of_another_method_are_refused_everywhere():
    cases = [("sds", {"weighting": "snr"}, "sds option weighting = 'snr' is not allowed: use one of 'sds', 'uniform'"),
             ("sds", {"theta": 30.0}, "sds has no option.*theta.*t_min \\(default 0.02\\)"),
             ("fsd", {"inversion_steps": 5}, "fsd has no option.*inversion_steps"),
             ("sdi", {"inversion_steps": 2.5}, "sdi option inversion_steps must be a whole number")]
    for method, options, needle in cases:
        with pytest.raises(UserError, match=needle):
            make_method(method, options=options)
        with pytest.raises(UserError, match=needle):
            GenerateConfig(prompt="a cube", method=method, method_options=options)
        with pytest.raises(ProtocolError, match=needle):
            validate_request({"prompt": "a cube", "method": method, "method_options": options})
    # a request without "method" gets the default method's options
    with pytest.raises(ProtocolError, match=f"{schema.DEFAULT_METHOD} has no option"):
        validate_request({"prompt": "a cube", "method_options": {"beta": 0.5}})
    for choice in schema.METHODS["fsd"].options["weighting"].choices:
        assert make_method("fsd", options={"weighting": choice}).weighting == choice


def test_the_protocol_and_the_config_name_the_schema_methods_and_presets():
    assert REQUEST_FIELDS["method"].choices == tuple(schema.METHODS)
    assert REQUEST_FIELDS["method"].default == GenerateConfig.method == schema.DEFAULT_METHOD
    assert REQUEST_FIELDS["preset"].choices == tuple(schema.PRESETS)
    assert REQUEST_FIELDS["preset"].default == schema.DEFAULT_PRESET in schema.PRESETS
    for name, preset in schema.PRESETS.items():
        assert preset.name == name and preset.label and preset.description
        # every preset value is a request field the protocol accepts, and the config takes it as it is
        validate_request({"prompt": "a cube", "preset": name, **preset.settings})
        config = with_preset(name, prompt="a cube")
        assert {key: getattr(config, key) for key in preset.settings} == preset.settings
    with pytest.raises(UserError, match="unknown preset 'demo': use one of tiny, draft"):
        with_preset("demo", prompt="a cube")


def test_no_two_presets_are_the_same():
    settings = [json.dumps(preset.settings, sort_keys=True) for preset in schema.PRESETS.values()]
    assert len(set(settings)) == len(settings)


def test_generate_help_lists_the_schema_methods_options_and_presets():
    parser = cli.build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    choices = {action.dest: action.choices for action in generate._actions if action.choices}
    assert list(choices["method"]) == list(schema.METHODS) and list(choices["preset"]) == list(schema.PRESETS)
    text = " ".join(generate.format_help().split())  # argparse may wrap lines
    for method in schema.METHODS.values():
        assert method.description in text and all(f"{option}=" in text for option in method.options)
    for preset in schema.PRESETS.values():
        assert preset.description in text


# ----- the Blender panel ---------------------------------------------------------------------------
# The panel's property definitions are read with the real bpy (PyPI bpy 5.0.1), from the add-on laid
# out as the build lays it out (shared/ copied in), in a subprocess so that this test's bpy import
# cannot change what tests/test_addon.py sets up before its own.

PANEL_DUMP = """
import json, sys
import bpy
from addon import props
out = {}
for name, prop in props.Distill3DSettings.__annotations__.items():
    if isinstance(prop, str):  # `from __future__ import annotations`: evaluated as Blender does
        prop = eval(prop, vars(props))
    keywords = {k: v for k, v in getattr(prop, "keywords", {}).items() if k != "update"}
    out[name] = {"function": prop.function.__name__, **keywords}
print(json.dumps(out, default=list))
"""
# The method options the panel shows today; more may be added.
PANEL_OPTIONS = {"weighting", "anneal_after", "inversion_cfg", "entropy", "inversion_steps", "beta", "theta"}


@pytest.fixture(scope="module")
def panel(tmp_path_factory) -> dict:
    pytest.importorskip("bpy")
    folder = tmp_path_factory.mktemp("panel")
    shutil.copytree(ROOT / "blender_addon", folder / "addon", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "shared", folder / "addon" / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-c", PANEL_DUMP], cwd=folder, capture_output=True, text=True,
                            timeout=300, env={"PATH": "/usr/bin:/bin", "BLENDER_USER_RESOURCES": str(folder),
                                              "HOME": str(folder)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _same_text(panel_text: str, schema_text: str) -> bool:
    """The panel's tooltip is the schema's help, capitalised, perhaps followed by a panel-only note."""
    text = panel_text[:1].lower() + panel_text[1:]
    return text == schema_text or text.startswith(schema_text + " (")


def test_the_panel_offers_the_schema_methods_and_presets(panel):
    assert [tuple(item) for item in panel["method"]["items"]] == [
        (name, method.label, method.description) for name, method in schema.METHODS.items()]
    assert panel["method"]["default"] == schema.DEFAULT_METHOD
    assert [tuple(item) for item in panel["preset"]["items"]] == [
        (name, preset.label, preset.description) for name, preset in schema.PRESETS.items()]
    assert panel["preset"]["default"] == schema.DEFAULT_PRESET


def test_the_panel_method_options_have_the_schema_ranges_defaults_and_descriptions(panel):
    options = {name: [m.options[name] for m in schema.METHODS.values() if name in m.options]
               for method in schema.METHODS.values() for name in method.options if name not in REQUEST_FIELDS}
    shown = {name for name in panel if name in options}
    assert PANEL_OPTIONS <= shown
    for name in sorted(shown):
        prop = panel[name]
        for spec in options[name]:  # one panel property serves every method that has the option
            assert _same_text(prop["description"], spec.help), (name, prop["description"], spec.help)
            if spec.choices:
                assert prop["function"] == "EnumProperty", name
                assert [item[0] for item in prop["items"]] == list(spec.choices), name
                assert prop["default"] == spec.default, name
                continue
            assert prop["function"] == {"int": "IntProperty", "float": "FloatProperty"}[spec.kind], name
            assert (prop.get("min"), prop.get("max")) == (spec.low, spec.high), name
            # an optional option (default null) is off at the panel's 0
            assert prop["default"] == (0 if spec.default is None else spec.default), name
