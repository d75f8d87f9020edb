"""Words the shapes prior cannot show are refused by name (issue 9), filler and negatives are not."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.cameras import VIEW_SUFFIXES
from backend.errors import UserError
from backend.methods import METHOD_CLASSES
from backend.priors.base import NFSD_NEGATIVE_PROMPT
from backend.priors.shapes import ShapesPrior, unknown_words

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prior():
    return ShapesPrior(resolution=8)


def test_unknown_words_are_named_with_the_vocabulary(prior):
    with pytest.raises(UserError) as info:
        prior.set_prompts("a purple elephant playing chess")
    message = str(info.value)
    assert "'elephant', 'playing', 'chess'" in message
    assert "'purple'" not in message.split(" in the prompt")[0]         # the known word is not blamed
    for word in ("sphere", "torus", "red", "striped", "donut", "photo of"):
        assert word in message
    assert "\n" not in message


@pytest.mark.parametrize("prompt, count", [
    ("a red cube", 1), ("A photo of a red cube", 1), ("the red cube, front view", 1),
    ("a DSLR photo of a green checkered cone", 1), ("a cylinder with red stripes", 1),
    ("red and blue spheres", 2), ("3d render of a red donut", 1), ("front view of a red box", 1)])
def test_filler_plurals_and_view_words_are_fine(prior, prompt, count):
    prior.set_prompts(prompt)
    assert len(prior.text_objects) == count
    assert unknown_words(prompt) == []


@pytest.mark.parametrize("suffix", VIEW_SUFFIXES)
def test_view_suffixes_and_every_default_negative_still_work(prior, suffix):
    negatives = {METHOD_CLASSES[name].default_negative for name in METHOD_CLASSES} | {NFSD_NEGATIVE_PROMPT, None, "a blue sphere"}
    for negative in negatives:
        prior.set_prompts(f"a red cube, {suffix}", negative)
        assert [o.name for o in prior.text_objects] == [prior.text_objects[0].name]
    prior.set_prompts("a red cube", "an elephant, blurry")                 # a negative may say anything
    assert prior.describe()["negative"] == "blurred"


@pytest.mark.parametrize("prompt", ["\U0001F600" * 1000, "\ud800", "!!! ???", "\u00e9\u00e8"])
def test_a_prompt_with_no_readable_words_is_refused_not_trained_on_every_object(prior, prompt):
    with pytest.raises(UserError, match="has no words the built-in 'shapes' prior can read"):
        prior.set_prompts(prompt)


def test_nothing_known_keeps_its_own_answer(prior):
    with pytest.raises(UserError, match="knows no object in the prompt"):
        prior.set_prompts("a zebra on a bicycle")


def test_the_cli_exits_2_naming_the_words():
    result = subprocess.run([sys.executable, "-m", "backend", "image", "a purple elephant playing chess",
                             "--steps", "1", "--resolution", "8", "--out", "/tmp/never.png"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 2, result.stderr
    assert "'elephant', 'playing', 'chess'" in result.stderr and "Traceback" not in result.stderr
