"""Kill the server PROCESS (`python -m backend serve`, the real training loop) mid-job with SIGKILL,
start it again on the same data dir: the job resumes from its checkpoint, nothing finished is lost,
and a clean SIGTERM later ends the process with exit code 0."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.client import Client, ServerUnreachable
from shared.ports import free_port_pair
from tests.server_fakes import SMALL, wait_state

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def start_backend(port, data_dir, log_path):
    log = open(log_path, "ab")
    process = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--port", str(port), "--data-dir",
                                str(data_dir), "--device", "cpu", "--preview-interval", "0"],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    client = Client(f"tcp://127.0.0.1:{port}", timeout_s=2.0)
    deadline = time.monotonic() + 180
    while True:  # up once it answers (importing torch takes a while on a busy machine)
        try:
            client.info()
            break
        except ServerUnreachable:
            assert process.poll() is None, Path(log_path).read_text()
            assert time.monotonic() < deadline, "the backend did not start"
    client.timeout_s = 30.0
    return process, client


def test_killed_mid_job_the_server_resumes_from_the_checkpoint_and_keeps_finished_results(tmp_path):
    port, data, log = free_port_pair(), tmp_path / "data", tmp_path / "server.log"
    process, client = start_backend(port, data, log)
    try:
        finished = client.submit({**SMALL, "steps": 1, "preview_every": 0})
        assert client.wait(finished, timeout_s=400)["state"] == "done"
        turntable = client.fetch(finished, "turntable.png")
        job = client.submit({**SMALL, "steps": 5000, "checkpoint_every": 2, "preview_every": 0})
        deadline = time.monotonic() + 300
        while client.status(job)["step"] < 3:  # step 3 reported: the step-2 checkpoint is on disk
            assert time.monotonic() < deadline
            time.sleep(0.1)
        process.kill()
        process.wait(30)
        client.close()
        assert (data / "jobs" / job / "checkpoint.pt").exists()

        process, client = start_backend(port, data, log)
        status = wait_state(client, job, ("running",), 120)
        assert status["attempts"] == 2 and "resuming from the checkpoint" in status["message"]
        deadline = time.monotonic() + 300
        while "resumed from" not in log.read_text():  # the training loop's own log line, via the server
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        resumed_at = int(log.read_text().split("resumed from")[1].split("at step")[1].split()[0])
        assert resumed_at >= 2
        assert client.status(finished)["state"] == "done"
        assert client.fetch(finished, "turntable.png") == turntable
        client.cancel(job)
        assert wait_state(client, job, ("cancelled",), 120)["step"] >= resumed_at
    finally:
        client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0, log.read_text()[-2000:]
    assert "Distill3D backend stopped" in log.read_text()
