"""The job lifecycle around training, with the fast stand-in for backend.train (tests/server_fakes.py):
queue order and cancel before start, crashes, a clean stop mid-job that resumes on the next start, and
recovery of a data dir a dead server left behind."""
import functools
import json
import queue

from backend.server.jobs import MAX_ATTEMPTS, JobStore
from shared.client import Client
from tests.server_fakes import (CountingLoader, collect, fake_train, running_server, subscribe_and_settle,
                                wait_state)

SLOW = functools.partial(fake_train, step_s=0.02)


def connect(server):
    return Client(f"tcp://127.0.0.1:{server.port}", timeout_s=10.0)


def test_jobs_run_one_at_a_time_and_a_queued_job_cancelled_never_starts(tmp_path):
    with running_server(tmp_path, train_fn=SLOW) as server, connect(server) as client:
        subscribe_and_settle(client)
        first = client.submit({"prompt": "a cube", "preset": "tiny", "steps": 30})
        second = client.submit({"prompt": "a cone", "preset": "tiny", "steps": 5})
        third = client.submit({"prompt": "a torus", "preset": "tiny", "steps": 5})
        assert client.status(second)["state"] == "queued"
        assert client.cancel(second)["state"] == "cancelled"
        wait_state(client, third, ("done",))  # polls status, leaves the events for collect()
        events = collect(client, lambda events: any(e["type"] == "result" and e["job_id"] == third for e in events))
        running = [e["job_id"] for e in events if e["type"] == "state" and e["state"] == "running"]
        assert running == [first, third]  # in order, one at a time, the cancelled one never ran
        assert client.status(first)["state"] == "done" and client.status(second)["step"] == 0
        assert client.info()["queued"] == 0


def test_a_crashing_job_fails_with_what_to_do_and_the_next_job_still_runs(tmp_path):
    with running_server(tmp_path) as server, connect(server) as client:
        crashed = client.submit({"prompt": "crash", "preset": "tiny", "steps": 10})
        status = wait_state(client, crashed, ("failed",))
        assert "crashed at step 2" in status["message"] and "NaN" in status["message"]
        assert "lower lr" in status["message"] and status["error_type"] == "RuntimeError"
        refused = client.submit({"prompt": "bad prompt", "preset": "tiny", "steps": 10})
        failed = wait_state(client, refused, ("failed",))
        assert "name a shape" in failed["message"] and failed["field"] == "prompt"  # the field reaches the panel
        fine = client.submit({"prompt": "a cube", "preset": "tiny", "steps": 3})
        assert client.wait(fine, timeout_s=30)["state"] == "done"


def test_a_clean_stop_mid_job_requeues_it_and_the_next_server_resumes_from_the_checkpoint(tmp_path):
    loader = CountingLoader()
    with running_server(tmp_path, train_fn=SLOW, prior_loader=loader) as server, connect(server) as client:
        done = client.submit({"prompt": "a cube", "preset": "tiny", "steps": 3})
        client.wait(done, timeout_s=30)
        glb = client.fetch(done, "mesh.glb")
        job = client.submit({"prompt": "a cone", "preset": "tiny", "steps": 200, "checkpoint_every": 1000})
        client.subscribe(job)
        collect(client, lambda events: any(e["type"] == "progress" and e["step"] >= 3 for e in events))
    status = json.loads((tmp_path / "jobs" / job / "status.json").read_text())
    assert status["state"] == "queued" and "resumes from its checkpoint" in status["message"]
    stopped_at = json.loads((tmp_path / "jobs" / job / "checkpoint.pt").read_text())["step"]
    assert 3 <= stopped_at < 200

    with running_server(tmp_path, prior_loader=loader) as server, connect(server) as client:
        final = client.wait(job, timeout_s=60)
        assert final["state"] == "done" and final["attempts"] == 2
        assert json.loads(client.fetch(job, "report.json")) == {"steps": 200, "resumed": True}
        assert client.fetch(done, "mesh.glb") == glb  # finished results survive the restart


def write_job(root, job_id, state, attempts=0, checkpoint=False, created=0.0):
    folder = root / "jobs" / job_id
    folder.mkdir(parents=True)
    (folder / "request.json").write_text(json.dumps({"prompt": "a cube", "preset": "tiny", "steps": 4}))
    (folder / "status.json").write_text(json.dumps({
        "job_id": job_id, "state": state, "step": 1, "total": 4, "message": "", "outputs": {}, "created": created,
        "attempts": attempts, "device": "cpu"}))
    if checkpoint:
        (folder / "checkpoint.pt").write_text(json.dumps({"step": 2}))
    return folder


def test_recovery_requeues_running_jobs_and_fails_what_cannot_run_with_the_reason(tmp_path):
    write_job(tmp_path, "resumable", "running", attempts=1, checkpoint=True, created=2.0)
    write_job(tmp_path, "fresh", "running", attempts=1, created=3.0)
    write_job(tmp_path, "waiting", "queued", created=1.0)
    write_job(tmp_path, "doomed", "running", attempts=MAX_ATTEMPTS, checkpoint=True)
    finished = write_job(tmp_path, "finished", "done")
    write_job(tmp_path, "garbled", "running")
    (tmp_path / "jobs" / "garbled" / "status.json").write_text('{"state": "runn')
    write_job(tmp_path, "no-request", "queued")
    (tmp_path / "jobs" / "no-request" / "request.json").unlink()
    (tmp_path / "jobs" / "not a job!").mkdir()

    store = JobStore(tmp_path)
    queued = store.load()
    assert [job.job_id for job in queued] == ["waiting", "resumable", "fresh"]
    assert "resumes from its last checkpoint" in store.get("resumable").status["message"]
    assert "starts again from the beginning" in store.get("fresh").status["message"]
    assert store.get("doomed").state == "failed" and "not retried" in store.get("doomed").status["message"]
    assert store.get("garbled").state == "failed" and "status.json" in store.get("garbled").status["message"]
    assert store.get("no-request").state == "failed" and "request.json" in store.get("no-request").status["message"]
    assert store.get("finished").state == "done"
    on_disk = json.loads((finished.parent / "doomed" / "status.json").read_text())
    assert on_disk["state"] == "failed"  # written back, so the decision survives another restart
    assert all(job.state != "running" for job in store.newest_first(100))


def test_a_restarted_server_builds_each_stored_request_once_and_fails_one_it_no_longer_accepts(tmp_path):
    """request.json is a boundary: the restarted server builds the job's config from it (not the job
    process), so a request this backend no longer takes fails before it reaches a runner."""
    write_job(tmp_path, "waiting", "queued", created=1.0)
    stale = write_job(tmp_path, "stale", "queued", created=2.0)
    (stale / "request.json").write_text(json.dumps({"prompt": "a cube", "preset": "tiny", "steps": 500_000_000}))
    tampered = write_job(tmp_path, "tampered", "queued", created=3.0)
    (tampered / "request.json").write_text(json.dumps({"prompt": "a cube", "stepz": 4}))
    executors = {}

    def factory(device):
        executors[device] = ScriptedExecutor(device)
        return executors[device]

    with running_server(tmp_path, executor_factory=factory) as server, connect(server) as client:
        assert client.wait("waiting", timeout_s=30)["state"] == "done"
        failed, unknown = client.status("stale"), client.status("tampered")
    assert failed["state"] == "failed" and failed["error_type"] == "ProtocolError"
    assert "no longer valid" in failed["message"] and failed["field"] == "steps"
    assert unknown["state"] == "failed" and unknown["field"] == "stepz"
    assert [spec.job_id for spec in executors["cpu"].specs] == ["waiting"]
    assert executors["cpu"].specs[0].config.steps == 4  # the stored request, built into the config


def test_status_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    store = JobStore(tmp_path)
    job = store.create({"prompt": "a cube"}, {"steps": 5}, "cpu")
    for step in range(50):
        store.update(job, step=step)
    assert json.loads((job.folder / "status.json").read_text())["step"] == 49
    assert sorted(p.name for p in job.folder.iterdir()) == ["request.json", "status.json"]


def test_the_command_line_refuses_bad_options_and_a_taken_port_with_the_fix(tmp_path, capsys):
    from backend.server import serve_from_args

    with running_server(tmp_path / "first") as server:
        assert serve_from_args(["--port", str(server.port), "--data-dir", str(tmp_path / "second")]) == 2
        assert "is another backend running?" in capsys.readouterr().out
    for options, needle in [(["--device", "tpu"], "not a device"), (["--device", "cuda:63"], "asked for, but PyTorch sees"),
                            (["--port", "70000"], "not a port number"),
                            (["--authorized-keys", str(tmp_path)], "needs --server-key")]:
        assert serve_from_args([*options, "--data-dir", str(tmp_path / "third")]) == 2
        assert needle in capsys.readouterr().out


class ScriptedExecutor:
    """A JobExecutor that runs nothing: each job reports one progress event and ends done at once. It
    shows the server needs only the executor's five calls (the seam a cluster executor would use)."""

    def __init__(self, device):
        self.loaded_priors, self.specs, self.messages = [], [], queue.Queue()

    def run(self, spec):
        self.specs.append(spec)
        self.messages.put(("event", spec.job_id, "progress", {"step": 1, "total": 1, "t": 0, "loss": 0.0,
                                                               "it_per_s": 1.0, "eta_s": 0.0}, []))
        self.messages.put(("end", spec.job_id, {"state": "done", "outputs": {}}))

    def receive(self, timeout_s):
        try:
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def cancel(self, job_id):
        pass

    def stop(self):
        pass

    def close(self, wait_s):
        pass


def test_the_job_executor_is_a_seam_another_executor_can_fill(tmp_path):
    executors = {}

    def factory(device):
        executors[device] = ScriptedExecutor(device)
        return executors[device]

    with running_server(tmp_path, executor_factory=factory) as server, connect(server) as client:
        subscribe_and_settle(client)
        job = client.submit({"prompt": "a cube", "preset": "tiny", "steps": 1, "prior": "some/model"})
        events = collect(client, lambda events: any(e["type"] == "result" for e in events))
        assert [e["step"] for e in events if e["type"] == "progress"] == [1]
        assert client.status(job)["state"] == "done"
    spec = executors["cpu"].specs[0]
    assert spec.job_id == job and spec.config.prior == "some/model" and spec.config.device == "cpu" and not spec.resume
    assert spec.config.steps == 1 and spec.config.prompt == "a cube"  # the config built at submit, not the request
