"""Tests of jobs/tune.py: bad input refused before anything starts, a small ASHA sweep with every output (a trial
stopped early, the next one starting, a crashed trial recorded), best.yaml trained again, a killed sweep resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from clipbert.model.checkpoint import WEIGHTS_NAME
from clipbert.config import load_config
from clipbert.training.run import prepare_task
from jobs import tune as job

ROOT = Path(__file__).resolve().parents[1]


def _args(corpus, tmp_path: Path, space: str, *extra: str) -> list[str]:
    """A sweep of the synthetic_tiny preset on the tiny corpus: one worker per trial, short schedules."""
    path = tmp_path / "space.yaml"
    path.write_text(space)
    return ["--config", "synthetic_tiny", "--space", str(path), "--set", f"data.root={corpus.root}",
            "--set", "train.num_workers=1", "--set", "train.eval_every_steps=3", "--set", "train.log_every_steps=100",
            "--storage-path", str(tmp_path / "sweeps"), "--name", "s", *extra]


@pytest.mark.parametrize("space, extra, message", [
    ("optim.lrr: {loguniform: [1.0e-5, 1.0e-3]}\n", [], "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
    ("optim.lr: {loguniform: [1.0e-3, 1.0e-5]}\n", [], "optim.lr: loguniform bounds must satisfy low < high"),
    ("optim.lr: {choice: [1.0e-4]}\n", ["--metric", "t2v_r2"], "--metric 't2v_r2' is never reported"),
    ("optim.lr: {choice: [1.0e-4]}\n", ["--storage-path", "/proc/sweeps"], "--storage-path /proc/sweeps/s is not"),
    ("optim.lr: {choice: [1.0e-4]}\n", ["--set", "model.init_checkpoint=/nonexistent/w.pt"],
     "model.init_checkpoint: no such file or directory: '/nonexistent/w.pt'"),
], ids=["unknown_key", "bad_bounds", "unknown_metric", "unwritable_storage", "missing_init_checkpoint"])
def test_bad_input_exits_2_before_anything_starts(tiny_corpus, tmp_path, capsys, space, extra, message):
    assert job.main([*_args(tiny_corpus, tmp_path, space), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow
def test_more_workers_per_trial_than_the_cluster_has_is_refused(ray_local, tiny_corpus, tmp_path, capsys):
    args = _args(tiny_corpus, tmp_path, "optim.lr: {choice: [1.0e-4]}\n", "--workers-per-trial", "9",
                 "--set", "optim.batch_size=1")
    assert job.main(args) == 2
    assert "--num-workers 9 cannot be placed: the cluster has 1.99 CPUs" in capsys.readouterr().err
    assert not list((tmp_path / "sweeps" / "s").glob("experiment_state*"))  # no trial was started


@pytest.mark.slow
def test_asha_sweep_writes_every_output_and_a_best_yaml_ready_to_train(ray_local, tiny_corpus, tmp_path, capsys):
    # The grid runs in order, one trial at a time. `epoch` as the metric orders the trials deterministically at
    # ASHA's rung (step 6): batch 4 is in its 2nd epoch, batch 1 and 2 in their 1st, so both are stopped there;
    # batch 64 does not fill a step of the 20 training rows and crashes. Batch 2 starts after batch 1 was stopped.
    space = "optim.batch_size: {grid: [4, 1, 64, 2]}\noptim.lr: {loguniform: [1.0e-5, 1.0e-3]}\n"
    args = _args(tiny_corpus, tmp_path, space, "--set", "optim.num_epochs=2", "--num-samples", "1",
                 "--metric", "epoch", "--grace-period", "6", "--reduction-factor", "2")
    assert job.main(args) == 0
    out = capsys.readouterr().out
    sweep = tmp_path / "sweeps" / "s"
    table = pd.read_parquet(sweep / "trials.parquet").set_index("optim.batch_size")
    assert table["status"].to_dict() == {4: "completed", 1: "stopped_early", 2: "stopped_early", 64: "errored"}
    assert table["steps"].to_dict() == {4: 10, 1: 6, 2: 6, 64: 0}  # the stopped ones ran 6 of their 40 and 20 steps
    assert table["stopped_early"].to_dict() == {4: False, 1: True, 2: True, 64: False}
    assert "20 training rows do not fill one step of 64" in table.loc[64, "error"]
    assert table.loc[4, "rank"] == 1 and table.loc[4, "best_epoch"] == 2
    best_run = sweep / "runs" / table.loc[4, "trial_id"]
    final = json.loads((best_run / "final_metrics.json").read_text())
    assert table.loc[4, "test_t2v_r1"] == final["test"]["t2v_r1"] and table.loc[4, "chosen_step"] == final["step"]
    assert all(pd.isna(table.loc[b, "test_t2v_r1"]) for b in (1, 2, 64))  # only a finished trial is tested
    for b in (1, 2):
        assert not (sweep / "runs" / table.loc[b, "trial_id"] / "best").exists()
    assert table.loc[4, "trial_id"] in out and "stopped_early" in out and "errored" in out  # the ranked table
    assert (sweep / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exported = load_file(str(sweep / "best" / WEIGHTS_NAME))
    for key, value in load_file(str(best_run / "best" / WEIGHTS_NAME)).items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0)

    cfg = load_config(str(sweep / "best.yaml"))  # the best trial's config, as is
    assert (cfg.optim.batch_size, cfg.optim.lr) == (4, pytest.approx(table.loc[4, "optim.lr"]))
    task = prepare_task(cfg)  # every input of best.yaml passes jobs/train.py's checks before launch
    assert len(task.train) == 20 and task.test  # the 20 training rows and the held-out split it names


def _registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints Ray Train has recorded in a run's snapshot (what a resumed run starts from)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(snapshot.get("checkpoint_results", []))


def _launch(args: list[str], log: Path, address: str) -> subprocess.Popen:
    """jobs/tune.py in a process group of its own, joining the Ray at `address`."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, str(ROOT / "jobs" / "tune.py"), *args, "--address", address]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(ray_local, tiny_corpus, tmp_path):
    space = "optim.lr: {grid: [3.0e-4, 1.0e-4]}\n"
    args = _args(tiny_corpus, tmp_path, space, "--set", "optim.batch_size=2", "--set", "optim.num_epochs=1",
                 "--num-samples", "1", "--scheduler", "fifo")
    runs = tmp_path / "sweeps" / "s" / "runs"
    killed = _launch(args, tmp_path / "killed.log", ray_local.address)
    deadline = time.time() + 300
    first = second = None
    while time.time() < deadline and killed.poll() is None:
        finished = sorted(runs.glob("*/final_metrics.json"))
        started = [d for d in runs.glob("*") if d.is_dir() and _registered_checkpoints(d)]
        if len(finished) == 1 and len(started) == 2:
            first = finished[0].parent
            second = next(d for d in started if d != first)
            break
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert first is not None, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (second / "final_metrics.json").exists(), "the sweep should have been killed part way"
    first_checkpoints = sorted(p.name for p in first.glob("checkpoint_*"))
    first_final = json.loads((first / "final_metrics.json").read_text())

    resumed = _launch(args, tmp_path / "resumed.log", ray_local.address)
    assert resumed.wait(timeout=400) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    # The finished trial trains no further (Tune may re-enter a trial that finished just before the kill and
    # before its state was saved: it then finds its last step done and only exports again, to the same result).
    assert sorted(p.name for p in first.glob("checkpoint_*")) == first_checkpoints
    again = json.loads((first / "final_metrics.json").read_text())
    assert (again["val"], again["test"], again["step"]) == (first_final["val"], first_final["test"], first_final["step"])
    final = json.loads((second / "final_metrics.json").read_text())
    assert final["last"]["step"] == 10 and final["last"]["resumed_from_step"] >= 3  # from its last checkpoint
    table = pd.read_parquet(tmp_path / "sweeps" / "s" / "trials.parquet")
    assert sorted(table["status"]) == ["completed", "completed"] and len(set(table["trial_id"])) == 2
