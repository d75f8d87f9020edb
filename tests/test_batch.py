"""Batch generation (backend/batch): the spec's validation, seed selection, the prior's score, and a
2-prompt x 2-seed batch on the shapes prior run for real three ways: in-process (with Ctrl-C, a
resuming rerun and a skipping rerun), on a local Ray with 2 workers, and on Ray with one worker
process killed (SIGKILL) mid-item. Items are tiny (a few steps, a checkpoint every 2) to keep the
suite fast; they check plumbing, not quality."""
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from backend.batch.select import mark_best
from backend.batch.sheet import label
from backend.batch.spec import expand, read_spec
from backend.errors import UserError
from shared.schema import PRESETS
from tests.batch_helpers import TIMEOUT_S, batch_command, item_status, run, start

SMALL = {"mesh_resolution": 32, "texture_size": 64, "face_budget": 500, "hash_log2_table": 12}
FLAGS = ("--checkpoint-every", "2", "--seeds", "2")  # besides batch_command's own
GENERATE_FILES = ("report.json", "turntable.png", "mesh.glb", "mesh.obj", "texture.png", "checkpoint.pt")


# ----- spec and validation (no training) --------------------------------------------------------------

def test_text_spec_expands_rows_by_methods_and_seeds_and_the_ids_are_stable(tmp_path):
    spec = tmp_path / "prompts.txt"
    spec.write_text("a red cube\n\n# a comment\na blue sphere\n")
    rows = read_spec(spec)
    assert [(r.number, r.values["prompt"]) for r in rows] == [(1, "a red cube"), (4, "a blue sphere")]
    items, invalid = expand(rows, {"steps": 7}, "tiny", ["sds", "fsd"], [3, 4])
    assert not invalid and len(items) == 8
    assert {(i.config.method, i.config.seed) for i in items} == {(m, s) for m in ("sds", "fsd") for s in (3, 4)}
    assert all(i.config.steps == 7 and i.config.resolution == 32 for i in items)  # flag, then the tiny preset
    again, _ = expand(rows, {"steps": 7}, "tiny", ["sds", "fsd"], [3, 4])
    assert [i.id for i in again] == [i.id for i in items] and len({i.id for i in items}) == 8
    other, _ = expand(rows, {"steps": 8}, "tiny", ["sds", "fsd"], [3, 4])
    assert not {i.id for i in other} & {i.id for i in items}  # other settings, other folders


def test_json_and_csv_rows_pin_their_own_settings_and_bad_rows_name_row_and_field(tmp_path):
    spec = tmp_path / "rows.json"
    spec.write_text(json.dumps([
        {"prompt": "a red cube", "method": "fsd", "seed": 9, "cfg": 12, "preset": "draft"},
        {"prompt": "a blue sphere", "cfg": 5000},
        {"prompt": "a red cube", "banana": 1},
        {"method": "sds"},
        {"prompt": "a red cube", "method_options": {"weighting": "cubic"}},
        "a green torus",
    ]))
    items, invalid = expand(read_spec(spec), {}, "tiny", ["sds"], [0, 1])
    pinned = [i for i in items if i.row == 1]
    draft_steps = PRESETS["draft"].settings["steps"]
    assert [(i.config.method, i.config.seed, i.config.cfg, i.config.steps) for i in pinned] == [("fsd", 9, 12.0, draft_steps)]
    assert [i.row for i in items] == [1, 6, 6]
    errors = {bad.row: bad.error for bad in invalid}
    assert errors[2].startswith("row 2: cfg = 5000 is out of range")
    assert errors[3].startswith("row 3: unknown setting 'banana'")
    assert errors[4].startswith("row 4: the request has no prompt")
    assert errors[5].startswith("row 5:") and "weighting" in errors[5]
    assert {bad.row: bad.field for bad in invalid}[2] == "cfg"

    table = tmp_path / "rows.csv"
    table.write_text("prompt,seed,cfg,steps,negative\na red cube,5,,12,\n42,x,7.5,,null\n")
    items, invalid = expand(read_spec(table), {}, "tiny", ["sds"], [0])
    settings = [(i.config.prompt, i.config.seed, i.config.cfg, i.config.steps) for i in items]
    assert settings == [("a red cube", 5, None, 12)]
    assert len(invalid) == 1 and invalid[0].error.startswith("row 3: seed must be a whole number")  # line 3 of the file


def test_unreadable_or_empty_spec_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="cannot read the batch spec"):
        read_spec(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="has no rows"):
        read_spec(tmp_path / "empty.txt")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_spec(tmp_path / "bad.json")


def test_keep_best_ranks_seeds_per_prompt_by_iou_or_prior_loss():
    def record(prompt, seed, **metrics):
        return {"prompt": prompt, "prior": "p", "method": "sds", "seed": seed, "state": "done", "metrics": metrics}
    records = [record("cube", 0, volume_iou=0.2), record("cube", 1, volume_iou=0.9), record("cube", 2, volume_iou=0.5),
               record("dog", 0, prior_loss=0.30), record("dog", 1, prior_loss=0.10),
               {**record("dog", 2, prior_loss=0.01), "state": "failed"}]
    mark_best(records, 2)
    assert [(r["rank"], r["kept"]) for r in records] == [(3, False), (1, True), (2, True), (2, True), (1, True),
                                                         (None, False)]
    assert "IoU 0.90 *" in label(records[1]) and "FAILED" in label(records[5])


def test_prior_score_prefers_the_prompt_object_over_a_wrong_one():
    """score.denoising_loss on the exact shapes prior: the true renders of "a red cube" score lower
    (better) than renders of a green torus seen from the same views."""
    from backend.batch.score import denoising_loss
    from backend.cameras import turntable_cameras
    from backend.priors import TEXT, View
    from backend.priors.shapes import ShapesPrior

    prior = ShapesPrior(resolution=24)
    cameras = turntable_cameras(4, 24, 24)
    views = [View(cameras=cameras[i:i + 1], shading="albedo", light_positions=cameras.positions[i:i + 1] * 1.5,
                  background=torch.ones(1, 3, 24, 24), opacity=torch.ones(1, 1, 24, 24)) for i in range(4)]

    def renders(prompt):
        prior.set_prompts(prompt)
        return torch.cat([(prior.candidates(TEXT, v)[0] + 1) / 2 for v in views])

    right, wrong = renders("a red cube"), renders("a green torus")
    prior.set_prompts("a red cube")
    assert denoising_loss(prior, right, views) < 0.5 * denoising_loss(prior, wrong, views)


# ----- real batches -------------------------------------------------------------------------------------

def write_spec(folder: Path, bad_row: bool = False) -> Path:
    rows = [{"prompt": "a red cube", **SMALL}, {"prompt": "a blue sphere", **SMALL}]
    if bad_row:
        rows.insert(1, {"prompt": "a green torus", "cfg": 5000, **SMALL})
    spec = folder / "spec.json"
    spec.write_text(json.dumps(rows))
    return spec


def read_index(out: Path) -> dict:
    return json.loads((out / "batch.json").read_text())


def wait_for_checkpoint(out: Path, process, timeout_s: float = TIMEOUT_S) -> Path:
    """The folder of an item that is training and has written a checkpoint (so it is mid-item)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and process.poll() is None:
        for folder in sorted(p for p in out.glob("*") if p.is_dir()):
            if ((folder / "checkpoint.pt").exists() and not (folder / "report.json").exists()
                    and item_status(folder).get("state") == "running"):
                return folder
        time.sleep(0.05)
    raise AssertionError(f"no item reached a checkpoint (exit code {process.poll()})")


def assert_complete(out: Path, items: int = 4) -> dict:
    index = read_index(out)
    done = [r for r in index["items"] if r["id"]]
    assert len(done) == items and all(r["state"] == "done" for r in done), [(r["id"], r["state"]) for r in done]
    assert index["counts"]["done"] == items and index["counts"]["pending"] == index["counts"]["running"] == 0
    for record in done:
        for name in GENERATE_FILES:
            assert (out / record["paths"][name]).exists(), (record["id"], name)
        report = json.loads((out / record["id"] / "report.json").read_text())
        assert report["steps_done"] == record["settings"]["steps"] == record["steps_done"]
        assert 0.0 <= record["metrics"]["volume_iou"] <= 1.0 and record["train_s"] > 0 and record["wall_s"] > 0
        assert (record["prompt"], record["seed"]) == (report["settings"]["prompt"], report["settings"]["seed"])
    assert {(r["prompt"], r["seed"]) for r in done} == {(p, s) for p in ("a red cube", "a blue sphere") for s in (0, 1)}
    assert (out / index["contact_sheet"]).exists()
    return index


@pytest.mark.slow
def test_in_process_batch_with_a_bad_row_ctrl_c_a_resuming_rerun_and_a_skipping_rerun(tmp_path):
    spec, out = write_spec(tmp_path, bad_row=True), tmp_path / "out"
    command = batch_command(spec, out, *FLAGS, "--steps", "6", "--keep-best", "1")
    process = start(command)
    interrupted = wait_for_checkpoint(out, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 130, err
    assert "row 2: cfg = 5000 is out of range" in err and "Traceback" not in err
    index = read_index(out)
    assert {r["id"]: r["state"] for r in index["items"] if r["id"]}[interrupted.name] == "pending"
    assert (interrupted / "checkpoint.pt").exists() and not (interrupted / "report.json").exists()

    result = run(command)  # the rerun resumes the interrupted item from its checkpoint and runs the rest
    assert result.returncode == 1, result.stderr  # 1: the bad row is still bad
    index = assert_complete(out)
    bad = [r for r in index["items"] if r["state"] == "invalid"]
    assert len(bad) == 1 and bad[0]["row"] == 2 and bad[0]["field"] == "cfg"
    resumed = next(r for r in index["items"] if r["id"] == interrupted.name)
    assert resumed["attempt"] == 2 and resumed["resumed_from_step"] >= 2, resumed
    assert sum(r["attempt"] == 1 and "resumed_from_step" not in r for r in index["items"] if r["id"]) == 3
    assert all(r["prior_reused"] for r in index["items"] if r["id"] and r["id"] != interrupted.name
               and r["started"] > resumed["started"])  # one prior loaded per process
    assert sorted(r["rank"] for r in index["items"] if r.get("kept")) == [1, 1]  # the best seed of each prompt

    reports = {p: p.stat().st_mtime_ns for p in out.glob("*/report.json")}
    again = run(command)
    assert again.returncode == 1 and "4 of 4 items done (4 from an earlier run)" in again.stdout, again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/report.json")} == reports
    assert all(r["reused"] for r in read_index(out)["items"] if r["id"])


@pytest.mark.slow
def test_batch_on_a_local_ray_with_two_workers(tmp_path):
    spec, out = write_spec(tmp_path), tmp_path / "out"
    result = run(batch_command(spec, out, *FLAGS, "--steps", "4", "--ray", "local", "--workers", "2"))
    assert result.returncode == 0, result.stderr
    index = assert_complete(out)
    assert index["mode"] == "ray local" and index["workers"] == 2
    assert "num_gpus" not in index["worker_resources"] and index["worker_resources"]["num_cpus"] >= 1  # CPU actors
    pids = {p["pid"] for p in index["worker_processes"]}
    assert len(pids) == 2 and pids != {os.getpid()}
    assert {r["worker"]["pid"] for r in index["items"]} <= pids
    by_worker = {}
    for record in sorted(index["items"], key=lambda r: r["started"]):
        by_worker.setdefault(record["worker"]["pid"], []).append(record["prior_reused"])
    assert all(flags == [False] + [True] * (len(flags) - 1) for flags in by_worker.values())  # loaded once each


@pytest.mark.slow
def test_a_worker_killed_mid_item_resumes_that_item_from_its_checkpoint(tmp_path):
    spec, out = write_spec(tmp_path), tmp_path / "out"
    process = start(batch_command(spec, out, *FLAGS, "--steps", "10", "--ray", "local", "--workers", "2"))
    victim = wait_for_checkpoint(out, process)
    killed = item_status(victim)["worker"]["pid"]
    os.kill(killed, signal.SIGKILL)  # the real worker process, as the OOM killer or a lost node would
    _, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, err
    index = assert_complete(out)
    record = next(r for r in index["items"] if r["id"] == victim.name)
    assert record["attempt"] == 2 and record["resumed_from_step"] >= 2, record  # from its checkpoint, not step 0
    assert record["worker"]["pid"] != killed and index["workers_replaced"] == 1


def test_an_item_on_a_stable_diffusion_prior_is_scored_by_the_prior(tmp_path):
    """The item runner's path for priors with no ground truth, on a tiny random-weight SD pipeline loaded
    through the users' path: the item finishes and batch_item.json holds its prior loss."""
    from dataclasses import replace

    from backend.batch.item_runner import BatchItemRunner
    from backend.config import with_preset
    from backend.priors.sd_random import save_random_pipeline

    folder = save_random_pipeline(tmp_path / "tiny-sd", "tiny", seed=0)
    config = with_preset("tiny", prompt="a red cube", prior=str(folder), offline=True, steps=2, resolution=16,
                         preview_every=0, export_mesh=False, hash_log2_table=12)
    threads = torch.get_num_threads()
    try:
        runner = BatchItemRunner(threads=1)  # one thread: see tests/batch_helpers.py ENV
        outcome = runner.run({"id": "sd-item", "config": config}, str(tmp_path / "out"))
        again = runner.run({"id": "sd-item-2", "config": replace(config, seed=1)}, str(tmp_path / "out"))
    finally:
        torch.set_num_threads(threads)
    assert outcome["state"] == "done", outcome.get("error")
    loss = outcome["metrics"]["prior_loss"]
    assert loss > 0 and loss == item_status(tmp_path / "out" / "sd-item")["metrics"]["prior_loss"]
    assert 0.0 <= outcome["metrics"]["coverage"] <= 1.0
    assert again["state"] == "done" and again["prior_reused"] and not outcome["prior_reused"]
