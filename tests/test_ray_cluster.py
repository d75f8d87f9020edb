"""Batch scale-out on a real Ray cluster simulated on this machine (ray.cluster_utils.Cluster: a head
node and a second node, separate raylets with one CPU each), and the wrong address failing fast.

The cluster test loses a whole node mid-item (cluster.remove_node kills its raylet and the worker
processes on it), the way a machine drops out of a cluster, and checks that the item resumes from its
checkpoint on the node that is left. docs/batch.md, 'A simulated cluster', has the commands and times.
"""
import json
import signal
import time
from pathlib import Path

import pytest

from backend.errors import UserError
from tests.batch_helpers import TIMEOUT_S, batch_command, item_status, start

DEAD_ADDRESS = "127.0.0.1:1"  # port 1: nothing listens there
SMALL = {"mesh_resolution": 32, "texture_size": 64, "face_budget": 500, "hash_log2_table": 12}
NODE = {"num_cpus": 1, "object_store_memory": 100 << 20, "include_dashboard": False}
STEPS, CHECKPOINT_EVERY = 20, 2  # after the first checkpoint 18 steps are left: time to remove the node


# ----- a wrong address ------------------------------------------------------------------------------

def test_a_dead_address_fails_at_once_naming_the_address_and_the_fix():
    """ray.init alone retries a dead address for many minutes; connect() probes it first."""
    from backend.runner.ray_connection import connect

    started = time.monotonic()
    with pytest.raises(UserError) as caught:
        connect(DEAD_ADDRESS)
    assert time.monotonic() - started < 60  # a hang guard, not a speed limit (docs/batch.md has the figures)
    message = str(caught.value)
    assert DEAD_ADDRESS in message and "ray start --head" in message and "--ray local" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="is not a Ray address: give HOST:PORT"):
        connect("10.0.0.1")  # no port


def test_the_batch_command_on_a_dead_address_exits_2_with_one_sentence(tmp_path, capsys):
    """`python -m backend batch SPEC --ray 127.0.0.1:1`, in this process (backend/__main__.py exits
    with main()'s code) to spare a second torch import."""
    from backend.cli import main

    spec = tmp_path / "prompts.txt"
    spec.write_text("a red cube\n")
    handler = signal.getsignal(signal.SIGINT)  # the batch command installs its Ctrl-C handler
    try:
        code = main(batch_command(spec, tmp_path / "out", "--steps", "2", "--ray", DEAD_ADDRESS)[3:])
    finally:
        signal.signal(signal.SIGINT, handler)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and lines == [lines[0]], lines
    assert lines[0].startswith(f"error: no Ray cluster answers at '{DEAD_ADDRESS}'"), lines


# ----- a node lost mid-item -------------------------------------------------------------------------

def raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def on_node(pid: int, node) -> bool:
    """Whether process `pid` is a worker of `node` (Ray's raylet starts each worker process)."""
    target = raylet_pid(node)
    for _ in range(8):  # the chain up to the raylet is short; stop at init or a gone process
        if pid == target:
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if pid <= 1:
            return False
    return False


def wait_for_checkpoint_on(node, out: Path, process, timeout_s: float = TIMEOUT_S) -> Path:
    """The folder of an item that trains on `node` and has written a checkpoint (so it is mid-item)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and process.poll() is None:
        for folder in sorted(p for p in out.glob("*") if p.is_dir()):
            status = item_status(folder)
            if ((folder / "checkpoint.pt").exists() and not (folder / "report.json").exists()
                    and status.get("state") == "running" and on_node(status["worker"]["pid"], node)):
                return folder
        time.sleep(0.05)
    raise AssertionError(f"no item reached a checkpoint on the second node (exit code {process.poll()})")


@pytest.fixture
def two_node_cluster():
    """A head and a second node on this machine, one CPU each. Only this cluster's processes are
    stopped afterwards (cluster.shutdown), never other Ray instances on the machine."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(NODE))
    try:
        second = cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        yield cluster, second
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_a_node_lost_mid_item_and_the_item_resumes_from_its_checkpoint_on_the_other_node(two_node_cluster, tmp_path):
    cluster, second = two_node_cluster
    spec, out = tmp_path / "spec.json", tmp_path / "out"
    spec.write_text(json.dumps([{"prompt": "a red cube", **SMALL}, {"prompt": "a blue sphere", **SMALL}]))
    # 2 workers on 2 one-CPU nodes: Ray places one actor per node; the driver joins the head's raylet.
    process = start(batch_command(spec, out, "--steps", str(STEPS), "--checkpoint-every", str(CHECKPOINT_EVERY),
                                  "--seeds", "2", "--no-export", "--ray", cluster.address, "--workers", "2"))
    try:
        victim = wait_for_checkpoint_on(second, out, process)
        lost_pid = item_status(victim)["worker"]["pid"]
        cluster.remove_node(second)  # its raylet and workers die: the whole node is gone
        _, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    index = json.loads((out / "batch.json").read_text())
    items = [r for r in index["items"] if r["id"]]
    assert len(items) == 4 and all(r["state"] == "done" and r["steps_done"] == STEPS for r in items), \
        [(r["id"], r["state"], r.get("error")) for r in items]
    assert all((out / r["id"] / "report.json").exists() for r in items)  # no export: it is tested elsewhere
    record = next(r for r in items if r["id"] == victim.name)
    assert record["attempt"] == 2 and record["resumed_from_step"] >= CHECKPOINT_EVERY, record  # not from step 0
    first = {p["pid"] for p in index["worker_processes"][:2]}  # the actors placed at the start, one per node
    assert len(first) == 2 and lost_pid in first
    assert record["worker"]["pid"] == (first - {lost_pid}).pop()  # the head's actor finished it
    assert index["workers_replaced"] == 1 and index["mode"] == f"ray {cluster.address}"
