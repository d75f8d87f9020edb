"""The fast stand-in for backend.train that the server tests use (tests/server_fakes.py) keeps train's
contract: it stops with a checkpoint when asked and resumes from it."""
import json

from tests.server_fakes import fake_train


def test_fake_train_stops_with_a_checkpoint_and_resumes_from_it(tmp_path):
    from backend.config import with_preset

    config = with_preset("tiny", prompt="a cube", steps=6, checkpoint_every=100, preview_every=2)
    events = []
    stopped = fake_train(config, tmp_path, events.append, should_stop=lambda: len(events) > 3, step_s=0)
    assert stopped.stopped and json.loads((tmp_path / "checkpoint.pt").read_text())["step"] >= 2
    done = fake_train(config, tmp_path, events.append, resume=True, step_s=0)
    assert not done.stopped and json.loads(done.outputs["report.json"].read_text()) == {"steps": 6, "resumed": True}
