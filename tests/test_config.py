import pytest

from backend.config import GenerateConfig, with_preset
from backend.errors import UserError


@pytest.mark.parametrize("changes, needle", [
    (dict(prompt="  "), "prompt is empty"),
    (dict(method="dreamfusion"), "method = 'dreamfusion' is not allowed: use one of 'sds'"),
    (dict(steps=0), "steps = 0 is out of range"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(cfg=float("nan")), "cfg must be a number"),
    (dict(device="tpu"), "device 'tpu' is not valid"),
])
def test_bad_settings_name_the_field_and_the_fix(changes, needle):
    with pytest.raises(UserError, match=needle):
        GenerateConfig(**{"prompt": "a red cube", **changes}).validate()


def test_preset_then_overrides_and_auto_schedule_scales_with_steps():
    config = with_preset("draft", prompt="a cube", steps=1000, cfg=None).resolved()
    assert config.resolution == 64 and config.cfg is None
    assert (config.albedo_steps, config.hash_levels_after, config.hash_levels_every) == (200, 200, 50)
    with pytest.raises(UserError, match="unknown preset"):
        with_preset("ultra", prompt="x")


def test_round_trip_through_a_dict_rejects_unknown_keys():
    config = GenerateConfig(prompt="a cube", method="fsd")
    assert GenerateConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UserError, match="unknown setting"):
        GenerateConfig.from_dict({"prompt": "x", "stepz": 3})
