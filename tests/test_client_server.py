"""End to end over real ZeroMQ sockets on loopback: shared.client <-> backend.server running the real
backend.train with the built-in "shapes" prior and the "tiny" preset, cut down to a few steps."""
import io
import json
import threading

import numpy as np
import pytest
import zmq
from PIL import Image

from backend.priors import load_prior
from shared.client import Client, ClientError, ServerUnreachable, VersionMismatch
from shared.protocol import PROTOCOL_VERSION
from tests.server_fakes import (SMALL, CountingLoader, collect, instant_train, running_server, subscribe_and_settle,
                                     wait_state)
from shared.ports import free_port_pair

pytestmark = pytest.mark.slow

def job_request(**changes):
    return {**SMALL, **changes}


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """One server with the real training loop and a counting wrapper around the real prior loader."""
    data = tmp_path_factory.mktemp("server")
    loader = CountingLoader(load_prior, log=data / "prior-loads.jsonl")
    from backend.train import train

    with running_server(data, train_fn=train, prior_loader=loader,
                        preview_interval_s=0.0) as server:
        server.loader = loader
        yield server


def client_for(server, **options):
    return Client(f"tcp://127.0.0.1:{server.port}", **{"timeout_s": 10.0, **options})


def by_type(events, kind):
    return [e for e in events if e["type"] == kind]


def test_submit_streams_to_two_clients_then_results_fetch_and_the_prior_stays_loaded(backend):
    with client_for(backend) as first, client_for(backend) as second:
        first.subscribe()
        subscribe_and_settle(second)
        job = first.submit(job_request(steps=8, preview_every=4, coarse_mesh_every=4, checkpoint_every=4))
        done = lambda events: any(e["type"] == "result" for e in events)  # noqa: E731
        seen = [collect(client, done, timeout_s=240) for client in (first, second)]
        status = first.status(job)
        assert status["state"] == "done" and status["step"] == 8 and status["attempts"] == 1
        for events in seen:
            mine = [e for e in events if e["job_id"] == job]
            assert [e["state"] for e in by_type(mine, "state")] == ["queued", "running", "done"]
            steps = [e["step"] for e in by_type(mine, "progress")]
            assert steps == sorted(steps) and steps[-1] == 8 and all(e["total"] == 8 for e in by_type(mine, "progress"))
            previews = by_type(mine, "preview")
            assert [p["step"] for p in previews] == [4, 8]
            image = Image.open(io.BytesIO(previews[-1]["png"]))
            assert image.size == (24, 24) == (previews[-1]["width"], previews[-1]["height"])
            meshes = by_type(mine, "mesh")
            assert [m["step"] for m in meshes] == [4, 8]
            faces = np.frombuffer(meshes[-1]["faces"], "<i4").reshape(-1, 3)
            assert faces.size == 0 or faces.max() < meshes[-1]["vertex_count"]
            assert set(by_type(mine, "result")[0]["outputs"]) == set(status["outputs"])
        assert {"turntable.png", "report.json", "checkpoint.pt"} <= set(status["outputs"])
        assert Image.open(io.BytesIO(first.fetch(job, "turntable.png"))).size[0] > 24
        assert json.loads(second.fetch(job, "report.json"))["steps_done"] == 8
        assert Image.open(io.BytesIO(second.fetch(job, "preview.png"))).size == (24, 24)

        again = first.submit(job_request(steps=5000, preview_every=0, seed=2))  # same prior, new run
        first.subscribe(again)
        collect(first, lambda events: any(e["type"] == "progress" and e["job_id"] == again for e in events), 240)
        first.cancel(again)
        assert wait_state(first, again, ("cancelled",), 120)["step"] >= 1
        assert backend.loader.calls == [("shapes", "cpu", 24)]  # loaded once, reused by the second job
        assert first.info()["loaded_priors"] == [{"name": "shapes", "device": "cpu", "resolution": 24, "options": {}}]
        assert [j["job_id"] for j in first.jobs()[:2]] == [again, job]


def test_cancel_stops_a_running_job_within_a_step(backend):
    with client_for(backend) as client:
        job = client.submit(job_request(steps=5000, preview_every=0, coarse_mesh_every=0, checkpoint_every=0))
        client.subscribe(job)
        collect(client, lambda events: any(e["type"] == "progress" and e["step"] >= 2 for e in events), 240)
        reply = client.cancel(job)
        assert reply["state"] == "running" and reply["cancel_requested"]
        status = wait_state(client, job, ("cancelled",), timeout_s=120)
        assert status["step"] - reply["step"] <= 2 and status["message"] == f"cancelled at step {status['step']}"
        assert client.cancel(job)["state"] == "cancelled"  # cancelling twice is harmless


def test_a_client_that_reconnects_mid_job_catches_up_from_status_and_the_last_preview(backend):
    with client_for(backend) as first:
        job = first.submit(job_request(steps=5000, preview_every=1, coarse_mesh_every=0, checkpoint_every=0))
        first.subscribe(job)
        collect(first, lambda events: len(by_type(events, "preview")) >= 2, 240)
    with client_for(backend) as late:  # the first client went away; a new one joins mid-job
        status = late.status(job)
        assert status["state"] == "running" and status["step"] >= 2 and status["has_preview"]
        assert Image.open(io.BytesIO(late.fetch(job, "preview.png"))).size == (24, 24)
        late.subscribe(job)
        events = collect(late, lambda events: any(e["type"] == "progress" and e["step"] > status["step"]
                                                   for e in events), 240)
        assert all(e["job_id"] == job for e in events)
        late.cancel(job)
        assert wait_state(late, job, ("cancelled",), 120)["state"] == "cancelled"


def test_job_errors_fail_the_job_with_an_actionable_message_and_the_server_keeps_serving(backend):
    with client_for(backend) as client:
        unknown = client.submit(job_request(prompt="a zebra on a bicycle", steps=2))
        status = wait_state(client, unknown, ("failed",), 240)
        assert "knows no object" in status["message"] and status["error_type"] == "UserError"
        assert client.info()["protocol"] == PROTOCOL_VERSION


def test_bad_requests_get_errors_naming_the_field(backend):
    with client_for(backend) as client:
        cases = [(lambda: client.submit(job_request(steps=0)), "steps", "out of range"),
                 (lambda: client.submit(job_request(method="magic")), "method", "use one of"),
                 (lambda: client.submit({"steps": 3}), "prompt", "no prompt"),
                 (lambda: client.submit(job_request(device="cuda:63")), "device", "asked for, but PyTorch sees"),
                 (lambda: client.status("no-such-job"), "job_id", "no job no-such-job"),
                 (lambda: client.fetch("no-such-job", "mesh.glb"), "job_id", "no job"),
                 (lambda: client.status("../../etc"), "job_id", "job id")]
        for call, field, needle in cases:
            with pytest.raises(ClientError) as error:
                call()
            assert error.value.field == field and needle in error.value.message, error.value.message
        job = client.jobs()[0]["job_id"]
        for name in ("../request.json", "request.json", "status.json", "/etc/passwd", "checkpoint.pt.tmp"):
            with pytest.raises(ClientError) as error:
                client.fetch(job, name)
            assert error.value.field == "name"




def test_a_mesh_travels_with_its_submit_into_the_job_folder_and_a_restarted_server_resumes_with_it(tmp_path):
    # The training is a stand-in (tests/selection_fakes.py): this is about the upload, the job folder and
    # the restart, which the real texture loop does not change.
    from tests.selection_fakes import fake_selection_train

    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], "<f4")
    faces = np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]], "<i4")
    uv = np.linspace(0, 1, 24, dtype="<f4").reshape(12, 2)
    request = {"prompt": "a red cube", "source": "texture", "steps": 200}
    with running_server(tmp_path, train_fn=fake_selection_train) as server, client_for(server) as client:
        with pytest.raises(ClientError) as error:  # a texture job without its mesh names the fix
            client.submit(request)
        assert error.value.field == "mesh" and "Client.submit(request, mesh=...)" in error.value.message
        bad = vertices.copy()
        bad[1, 2] = np.inf
        with pytest.raises(ClientError, match="NaN or infinite") as error:  # backend.texture.mesh_input's check
            client.submit(request, mesh={"vertices": bad, "faces": faces})
        assert error.value.field == "mesh"
        with pytest.raises(ClientError, match="index vertex 9"):
            client.submit(request, mesh={"vertices": vertices, "faces": faces + np.array([0, 0, 6], "<i4")})
        job = client.submit(request, mesh={"vertices": vertices, "faces": faces, "corner_uv": uv})
        wait_state(client, job, ("running",), 60)
        assert client.status(job)["config"]["source_mesh"] == "source_mesh.npz"
    with np.load(tmp_path / "jobs" / job / "source_mesh.npz") as stored:  # exactly what was sent
        assert all(stored[name].tobytes() == sent.tobytes() and stored[name].dtype == sent.dtype
                   for name, sent in (("vertices_gltf", vertices), ("faces", faces), ("corner_uv", uv)))
    with running_server(tmp_path, train_fn=fake_selection_train) as server, client_for(server) as client:
        status = wait_state(client, job, ("done", "failed"), 60)
        assert status["state"] == "done", status["message"]
        assert np.frombuffer(client.fetch(job, "corner_uv.bin"), "<f4").tobytes() == uv.tobytes()
        assert json.loads(client.fetch(job, "report.json"))["face_count"] == 4


def test_an_absent_server_times_out_clearly_and_a_request_from_then_is_never_delivered(tmp_path):
    port = free_port_pair()
    client = Client(f"tcp://127.0.0.1:{port}", timeout_s=0.5)
    with pytest.raises(ServerUnreachable, match=f"127.0.0.1:{port}.*start it"):
        client.submit({"prompt": "a cube", "steps": 1})
    from backend.server.server import Server

    server = Server(tmp_path, port=port, device="cpu", train_fn=instant_train)
    thread = server.run_in_thread()
    try:
        client.timeout_s = 10.0
        assert client.info()["event_port"] == port + 1
        assert client.jobs() == []  # the submit made while the server was down did not arrive late
    finally:
        client.close()
        server.stop()
        thread.join(30)


def test_protocol_versions_must_match_and_the_error_says_which_side_to_update(backend):
    context = zmq.Context.instance()
    raw = context.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(f"tcp://127.0.0.1:{backend.port}")
    raw.send_multipart([b"", json.dumps({"v": PROTOCOL_VERSION + 1, "id": 7, "cmd": "info"}).encode()])
    assert raw.poll(10_000)
    reply = json.loads(raw.recv_multipart()[1])
    raw.close()
    assert reply["ok"] is False and reply["id"] == 7 and reply["error"]["code"] == "version"
    assert "update the Distill3D backend" in reply["error"]["message"]

    old_server = context.socket(zmq.ROUTER)  # a server from another protocol version
    old_server.linger = 0
    port = old_server.bind_to_random_port("tcp://127.0.0.1")
    with Client(f"tcp://127.0.0.1:{port}", timeout_s=10.0) as client:
        def answer():
            identity, empty, header = old_server.recv_multipart()
            old_server.send_multipart([identity, b"", json.dumps({"v": PROTOCOL_VERSION + 1, "id": json.loads(header)["id"],
                                                                   "ok": True, "result": {}}).encode()])

        thread = threading.Thread(target=answer)
        thread.start()
        with pytest.raises(VersionMismatch, match="update the Blender add-on"):
            client.info()
        thread.join(10)
    old_server.close()


@pytest.mark.gpu
def test_cancel_gives_the_jobs_gpu_memory_back(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from backend.train import train

    def used():  # the whole GPU's, as the job runs in the server's worker process
        free, total = torch.cuda.mem_get_info(0)
        return total - free

    with running_server(tmp_path, train_fn=train, prior_loader=load_prior) as server, client_for(server) as client:
        warm = client.submit(job_request(device="cuda:0", steps=1, preview_every=0))  # worker, CUDA and prior up
        wait_state(client, warm, ("done",), 240)
        baseline = used()
        job = client.submit(job_request(device="cuda:0", steps=100_000, hash_log2_table=19, hash_levels=16,
                                        hash_levels_start=16, preview_every=0))
        client.subscribe(job)
        collect(client, lambda events: any(e["type"] == "progress" and e["step"] >= 3 for e in events), 240)
        during = used() - baseline
        client.cancel(job)
        wait_state(client, job, ("cancelled",), 120)
        after = used() - baseline  # the loaded prior stays; the field and optimiser go
        assert during > 64 * 2**20 and after < 0.25 * during, (during, after)
