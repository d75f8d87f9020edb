"""`serve --ray`: the server's jobs run on a real local Ray (the 2 CPUs here) through RayExecutor,
with real ZeroMQ clients on loopback. The first test runs the real backend.train on the shapes prior;
the lost-actor test uses the fast stand-in (tests/server_fakes.py), since it is about the executor."""
import functools
import io
import json

import pytest
from PIL import Image

from backend.priors import load_prior
from backend.runner import ray_connection
from backend.runner.job_runner import RunnerOptions
from backend.runner.ray_executor import RayExecutor
from shared.client import Client
from tests.server_fakes import SMALL, CountingLoader, collect, fake_train, running_server, wait_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray_connection.connect(ray_connection.LOCAL)
    yield
    ray_connection.disconnect()


def on_ray(options):
    return lambda device: RayExecutor(device, options)


def client_for(server):
    return Client(f"tcp://127.0.0.1:{server.port}", timeout_s=10.0)


def of_type(events, job_id, kind):
    return [e for e in events if e["job_id"] == job_id and e["type"] == kind]


def test_jobs_on_ray_stream_previews_finish_with_files_keep_the_prior_and_cancel(local_ray, tmp_path):
    from backend.train import train

    loader = CountingLoader(load_prior, log=tmp_path / "prior-loads.jsonl")  # runs in the actor: logs to a file
    options = RunnerOptions(train_fn=train, prior_loader=loader)
    with running_server(tmp_path / "data", executor_factory=on_ray(options)) as server, client_for(server) as client:
        client.subscribe()
        job = client.submit({**SMALL, "steps": 6, "preview_every": 3, "coarse_mesh_every": 0, "checkpoint_every": 3})
        events = collect(client, lambda events: of_type(events, job, "result") or client.status(job)["state"] == "failed",
                         timeout_s=300)
        status = client.status(job)
        assert status["state"] == "done", status["message"]
        assert [e["state"] for e in of_type(events, job, "state")] == ["queued", "running", "done"]
        steps = [e["step"] for e in of_type(events, job, "progress")]
        assert steps == sorted(steps) and steps[-1] == 6
        previews = of_type(events, job, "preview")
        assert [p["step"] for p in previews] == [3, 6]
        assert Image.open(io.BytesIO(previews[-1]["png"])).size == (24, 24)
        assert {"report.json", "checkpoint.pt", "turntable.png"} <= set(status["outputs"])
        assert json.loads(client.fetch(job, "report.json"))["steps_done"] == 6  # written by the actor
        assert (server.data_dir / "jobs" / job / "checkpoint.pt").is_file()
        assert client.info()["loaded_priors"] == [{"name": "shapes", "device": "cpu", "resolution": 24, "options": {}}]

        long = client.submit({**SMALL, "steps": 5000, "preview_every": 0, "coarse_mesh_every": 0, "seed": 2})
        collect(client, lambda events: any(e["step"] >= 2 for e in of_type(events, long, "progress")), 300, events)
        reply = client.cancel(long)
        assert reply["cancel_requested"]
        status = wait_state(client, long, ("cancelled", "failed"), 120)
        assert status["state"] == "cancelled" and 2 <= status["step"] < 5000
        assert loader.calls == [("shapes", "cpu", 24)]  # the actor kept the prior loaded for the second job


def test_a_lost_ray_actor_fails_its_job_and_the_next_job_gets_a_new_actor(local_ray, tmp_path):
    import ray

    options = RunnerOptions(train_fn=functools.partial(fake_train, step_s=0.05))
    with running_server(tmp_path, executor_factory=on_ray(options)) as server, client_for(server) as client:
        client.subscribe()
        doomed = client.submit({"prompt": "a cube", "preset": "tiny", "steps": 5000})
        collect(client, lambda events: any(e["step"] >= 2 for e in of_type(events, doomed, "progress")), 120)
        executor = server._devices["cpu"].executor
        ray.kill(executor.actor)
        status = wait_state(client, doomed, ("failed",), 60)
        assert status["error_type"] == "WorkerLost" and "Ray worker" in status["message"]
        assert "resubmit" in status["message"]
        after = client.submit({"prompt": "a cone", "preset": "tiny", "steps": 3})
        assert client.wait(after, timeout_s=120)["state"] == "done"
        assert client.fetch(after, "mesh.glb") == b"glTFa cone"


def test_stopping_the_server_mid_job_on_ray_checkpoints_and_requeues_it(local_ray, tmp_path):
    options = RunnerOptions(train_fn=functools.partial(fake_train, step_s=0.05))
    with running_server(tmp_path, executor_factory=on_ray(options)) as server, client_for(server) as client:
        client.subscribe()
        job = client.submit({"prompt": "a cube", "preset": "tiny", "steps": 5000, "checkpoint_every": 100000})
        collect(client, lambda events: any(e["step"] >= 2 for e in of_type(events, job, "progress")), 120)
    status = json.loads((tmp_path / "jobs" / job / "status.json").read_text())
    assert status["state"] == "queued" and "resumes from its checkpoint" in status["message"]
    assert 2 <= json.loads((tmp_path / "jobs" / job / "checkpoint.pt").read_text())["step"] < 5000
