import pickle
from dataclasses import FrozenInstanceError, replace

import pytest

from backend.config import GenerateConfig, with_preset
from backend.errors import UserError
from shared.schema import PRESETS


@pytest.mark.parametrize("changes, needle", [
    (dict(prompt="  "), "prompt is empty"),
    (dict(method="dreamfusion"), "method = 'dreamfusion' is not allowed: use one of 'sds'"),
    (dict(steps=0), "steps = 0 is out of range"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(cfg=float("nan")), "cfg must be a number"),
    (dict(device="tpu"), "device 'tpu' is not valid"),
])
def test_bad_settings_name_the_field_and_the_fix(changes, needle):
    with pytest.raises(UserError, match=needle) as error:
        GenerateConfig(**{"prompt": "a red cube", **changes})  # refused when built: no config is ever invalid
    assert error.value.field == next(iter(changes))  # the field travels with the error up to the panel


def test_a_config_is_frozen_a_changed_copy_is_checked_and_it_crosses_processes_whole():
    config = with_preset("tiny", prompt="a cube", steps=7)
    with pytest.raises(FrozenInstanceError):
        config.steps = 0
    with pytest.raises(UserError, match="steps = 0 is out of range") as error:
        replace(config, steps=0)
    assert error.value.field == "steps"
    with pytest.raises(UserError, match="needs a mesh") as error:
        replace(config, source="texture")
    assert error.value.field == "source_mesh"
    with pytest.raises(UserError, match="device 'tpu' is not valid"):
        replace(config, device="tpu")  # a changed copy is checked too
    placed = replace(config, device="cpu", prior="/models/sd")
    assert (placed.device, placed.prior, placed.steps, config.prior) == ("cpu", "/models/sd", 7, "shapes")
    assert pickle.loads(pickle.dumps(placed)) == placed  # how a JobSpec carries it to a job process or Ray


def test_preset_then_overrides_and_auto_schedule_scales_with_steps():
    config = with_preset("draft", prompt="a cube", steps=2000, cfg=None).resolved()
    draft = PRESETS["draft"].settings
    assert (config.resolution, config.coarse_fraction) == (draft["resolution"], draft["coarse_fraction"])
    assert config.steps == 2000 != draft["steps"] and config.cfg is None   # the override wins
    assert (config.albedo_steps, config.hash_levels_after, config.hash_levels_every) == (400, 400, 100)
    with pytest.raises(UserError, match="unknown preset"):
        with_preset("ultra", prompt="x")


def test_round_trip_through_a_dict_rejects_unknown_keys():
    config = GenerateConfig(prompt="a cube", method="fsd")
    assert GenerateConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UserError, match="unknown setting"):
        GenerateConfig.from_dict({"prompt": "x", "stepz": 3})
