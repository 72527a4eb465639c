"""Tests of jobs/train.py: bad input, a two-node run with a killed worker then resumed, and `ray job submit`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipbert.model.checkpoint import CONFIG_NAME, RERANK_NAME, WEIGHTS_NAME, load_checkpoint
from clipbert.data.annotations import load_annotations
from clipbert.training.evaluation import evaluate
from clipbert.ray_init import STATE_API_ENV
from jobs import train as job

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _args(corpus, storage: Path, *extra: str) -> list[str]:
    """A short 2-worker run of the synthetic_tiny preset on the tiny corpus."""
    return ["--config", "synthetic_tiny", "--set", f"data.root={corpus.root}", "--set", "optim.batch_size=2",
            "--set", "optim.num_epochs=1", "--set", "train.eval_every_steps=2", "--num-workers", "2",
            "--storage-path", str(storage), *extra]


# ----------------------------------------------------------------------------------------- bad input
def test_unknown_config_key_names_the_nearest_key(tiny_corpus, tmp_path, capsys):
    code = job.main(_args(tiny_corpus, tmp_path, "--set", "optim.lrr=1e-4"))
    assert code == 2
    assert "unknown config key 'optim.lrr'; did you mean 'optim.lr'?" in capsys.readouterr().err



def test_a_missing_init_checkpoint_exits_2_in_one_line_before_ray_starts(tiny_corpus, tmp_path, capsys,
                                                                         monkeypatch):
    from clipbert import ray_init

    started = []
    monkeypatch.setattr(ray_init, "init_ray", lambda *args, **kwargs: started.append(args))
    gone = tmp_path / "clipbert_image_text_pretrained.pt"
    start = time.monotonic()
    code = job.main(_args(tiny_corpus, tmp_path / "runs", "--set", f"model.init_checkpoint={gone}"))
    assert code == 2 and time.monotonic() - start < 20  # the workers are never started
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(f"model.init_checkpoint: no such file or directory: '{gone}'")
    assert not started and not (tmp_path / "runs" / "synthetic_tiny").exists()  # Ray was never started or joined

@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "data.frame_store=/nonexistent/frames"], "data.frame_store: no such frame-store directory"),
        (["--storage-path", "/proc/clipbert_runs"], "--storage-path /proc/clipbert_runs is not writable"),
        (["--num-workers", "16"], "--num-workers 16 cannot be placed: the cluster has 2 CPUs"),
        (["--num-workers", "1", "--gpu"], "--num-workers 1 needs 1 GPUs; the cluster has 0"),
    ],
    ids=["missing_frame_store", "unwritable_storage", "too_many_workers", "no_gpu"],
)
def test_bad_input_exits_2_with_a_message(ray_two_nodes, tiny_corpus, tmp_path, capsys, extra, message):
    code = job.main(_args(tiny_corpus, tmp_path, "--address", ray_two_nodes.address, *extra))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "synthetic_tiny").exists()  # nothing ran


# --------------------------------------------------------------------------- multi-node, failure, resume
@pytest.mark.slow
def test_spread_run_survives_a_killed_worker_then_resumes(ray_two_nodes, tiny_corpus, tmp_path, monkeypatch):
    """One worker per node; rank 1 (second node) dies at step 4, after the checkpoint of step 2, and the restarted
    worker group resumes from that checkpoint and finishes (5 steps). The same storage and name with 2 epochs
    then continues from step 5 to step 10. (One scenario, so that the slow runs stay few.)"""
    from ray.util.state import list_actors

    from clipbert.training.loop import STATE_NAME
    from clipbert.training.run import FAULT_ENV

    args = _args(tiny_corpus, tmp_path, "--address", ray_two_nodes.address, "--name", "spread",
                 "--set", "train.placement_strategy=SPREAD", "--set", "train.max_failures=1",
                 "--set", "train.keep_checkpoints=10")
    def train_workers() -> dict[str, str]:
        """actor id -> node id of every Ray Train worker the cluster has had"""
        actors = list_actors(address=ray_two_nodes.address, filters=[("class_name", "=", "RayTrainWorker")])
        return {a.actor_id: a.node_id for a in actors}

    before = train_workers()  # the session's cluster ran other training before
    monkeypatch.setenv(FAULT_ENV, "4")
    assert job.main(args) == 0
    run_dir = tmp_path / "spread"
    final = json.loads((run_dir / "final_metrics.json").read_text())
    _check_final_metrics(final, run_dir, tiny_corpus)
    assert (final["last"]["step"], final["last"]["resumed_from_step"]) == (5, 2)
    workers = [node for actor, node in train_workers().items() if actor not in before]
    nodes = {n.node_id for n in [ray_two_nodes.head_node, *ray_two_nodes.worker_nodes]}
    assert len(workers) == 4  # two attempts of two workers
    assert sorted(workers.count(n) for n in nodes) == [2, 2]

    monkeypatch.delenv(FAULT_ENV)
    first_run = set(run_dir.glob("checkpoint_*"))
    assert job.main([*args, "--set", "optim.num_epochs=2"]) == 0
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert (final["last"]["step"], final["last"]["resumed_from_step"]) == (10, 5)
    resumed = set(run_dir.glob("checkpoint_*")) - first_run
    steps = sorted(torch.load(d / STATE_NAME, weights_only=True)["step"] for d in resumed)
    assert steps == [6, 8, 10]  # the resumed run reports after step 5 only


def _check_final_metrics(final: dict, run_dir: Path, corpus) -> None:
    """final_metrics.json names the best evaluation and its checkpoint, exported to RUN/best/ (loadable)."""
    assert final["metric"] == "t2v_r1" and final["step"] == final["val"]["step"] in (2, 4, 5)
    assert final["val"]["t2v_r1"] >= final["last"]["t2v_r1"]
    for key in ("t2v_r1", "v2t_r1", "itc_t2v_r1", "mc_acc", "train_samples_per_s", "data_wait_fraction"):
        assert key in final["val"], key
    assert final["val"]["train_samples_per_s"] > 0 and 0 <= final["val"]["data_wait_fraction"] <= 1
    best = Path(final["exported"])
    assert best == run_dir / "best"
    assert sorted(p.name for p in best.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME, RERANK_NAME]
    model, cfg = load_checkpoint(best)
    assert cfg.model == corpus.config("synthetic_tiny").model
    source = load_file(str(Path(final["checkpoint"]) / WEIGHTS_NAME))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, source[key], rtol=0, atol=0)
    test_rows, _ = load_annotations(cfg.data.test_file)  # the held-out split, scored once with the exported model
    test_mc, _ = load_annotations(cfg.data.test_mc_file)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run's workers (1 CPU each): the same sums, so near-tied ranks break alike
    try:
        expected = evaluate(model, corpus.config("synthetic_tiny"), test_rows, torch.device("cpu"), mc_rows=test_mc)
    finally:
        torch.set_num_threads(threads)
    assert final["test"] == pytest.approx(expected, abs=1e-9) and {"t2v_r1", "mc_acc"} <= set(final["test"])
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


# ------------------------------------------------------------------------------------- ray job submit
@pytest.fixture
def job_server(ray_local):
    """The URL of the session's local Ray dashboard, whose job server `ray job submit` sends jobs to, and the
    environment for the `ray` CLI (the venv's, RAY_ADDRESS unset)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    return env[STATE_API_ENV], env


@pytest.mark.slow
def test_ray_job_submit_runs_train_to_completion(job_server, tiny_corpus, tmp_path):
    url, env = job_server
    storage = tmp_path / "runs"
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", url, "--working-dir", ".", "--",
           sys.executable, "jobs/train.py", *_args(tiny_corpus, storage, "--name", "submitted")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "succeeded" in output, output[-4000:]
    final = json.loads((storage / "submitted" / "final_metrics.json").read_text())
    assert final["last"]["step"] == 5
    assert final["val"]["t2v_r1"] >= final["last"]["t2v_r1"]
    assert Path(final["exported"], "model.safetensors").is_file()
