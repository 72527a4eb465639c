"""Tests of clipbert/training/run.py (resource plan, schedule, task preparation, trainer, test split).

The Ray Train runs themselves (2 workers on two nodes, a killed worker, resume) are in test_train_job.py.
"""

from __future__ import annotations

import json

import pytest

from clipbert.training import run as training
from clipbert.config import config_to_dict, load_config


# ------------------------------------------------------------------------------------------- resource plan
@pytest.mark.parametrize(
    "cluster, workers, gpu, expected",
    [
        ({"CPU": 16.0}, 4, False, (1.0, 1.0)),  # room for one CPU each and the data stage
        ({"CPU": 3.0}, 2, False, (1.0, 1.0)),
        ({"CPU": 2.0}, 1, False, (1.0, 1.0)),
        ({"CPU": 2.0}, 2, False, (0.5, 0.5)),  # this machine: 2 x 0.5 + 0.5 for the data stage
        ({"CPU": 2.0}, 4, False, (0.25, 0.5)),
        ({"CPU": 1.0}, 1, False, (0.5, 0.5)),
        ({"CPU": 32.0, "GPU": 4.0}, 4, True, (1.0, 1.0)),
    ],
)
def test_plan_resources_fits_workers_and_data_stage(cluster, workers, gpu, expected):
    per_worker, data = training.plan_resources(cluster, workers, gpu)
    assert (per_worker, data) == expected
    assert per_worker * workers + data <= cluster["CPU"]


@pytest.mark.parametrize(
    "cluster, workers, gpu, message",
    [
        ({"CPU": 2.0}, 5, False, r"--num-workers 5 cannot be placed: the cluster has 2 CPUs.*at most 4 workers"),
        ({"CPU": 2.0}, 64, False, r"--num-workers 64 cannot be placed"),
        ({"CPU": 8.0, "GPU": 1.0}, 2, True, r"--num-workers 2 needs 2 GPUs; the cluster has 1"),
        ({"CPU": 8.0}, 1, True, r"needs 1 GPUs; the cluster has 0"),
        ({"CPU": 8.0}, 0, False, r"--num-workers must be >= 1"),
    ],
)
def test_plan_resources_refuses_what_cannot_be_placed(cluster, workers, gpu, message):
    with pytest.raises(ValueError, match=message):
        training.plan_resources(cluster, workers, gpu)


@pytest.mark.parametrize(
    "rows, batch, workers, accum, epochs, expected",
    [
        (32, 4, 2, 1, 2.0, (4, 8)),
        (32, 4, 2, 2, 2.0, (2, 4)),  # grad accumulation: fewer optimiser steps
        (33, 4, 2, 1, 1.5, (4, 6)),  # a partial last step is dropped; fractional epochs round up
        (32, 4, 1, 1, 0.1, (8, 1)),  # at least one step
        (1000, 16, 8, 1, 20.0, (7, 140)),
    ],
)
def test_schedule_table(tiny_corpus, rows, batch, workers, accum, epochs, expected):
    cfg = tiny_corpus.config("synthetic_tiny", f"optim.batch_size={batch}", f"optim.grad_accum_steps={accum}",
                             f"optim.num_epochs={epochs}")
    assert training.schedule(cfg, rows, workers) == expected


def test_schedule_refuses_too_few_rows(tiny_corpus):
    cfg = tiny_corpus.config("synthetic_tiny", "optim.batch_size=4")
    with pytest.raises(ValueError, match=r"7 training rows do not fill one step of 8"):
        training.schedule(cfg, 7, 2)


# ----------------------------------------------------------------------------------------- bad input
def test_prepare_task_counts_broken_lines_and_unknown_videos(tiny_corpus, tmp_path):
    lines = (tiny_corpus.root / "txt" / "retrieval_train.jsonl").read_text().splitlines()
    bad = tmp_path / "train.jsonl"
    bad.write_text("\n".join([lines[0], '{"clip_name": "video00001", "caption": ', *lines[1:],
                              json.dumps({"clip_name": "no_such_video", "caption": "a red circle"})]) + "\n")
    cfg = tiny_corpus.config("synthetic_tiny", f"data.train_file={bad}")
    task = training.prepare_task(cfg)
    assert len(task.train) == len(lines)
    report = task.reports[0]
    assert report.num_lines == len(lines) + 2
    assert report.skipped == {"bad_json": 1, "unknown_video": 1}
    assert any("no_such_video" in p for p in report.problems)
    assert len(task.val) == len(tiny_corpus.val_ids) and task.val_mc
    assert sorted(r["video_id"] for r in task.test) == sorted(tiny_corpus.test_ids)  # held out from train and val


def test_prepare_task_reads_no_test_split_when_none_is_set(tiny_corpus, tmp_path):
    assert training.prepare_task(tiny_corpus.config("synthetic_tiny", "data.test_file=''")).test == []
    cfg = tiny_corpus.config("synthetic_tiny", f"data.test_file={tmp_path / 'gone.jsonl'}")
    with pytest.raises(FileNotFoundError, match=r"data.test_file: no such annotation file: .*gone.jsonl"):
        training.prepare_task(cfg)


def test_prepare_task_missing_frame_store(tiny_corpus, tmp_path):
    cfg = tiny_corpus.config("synthetic_tiny", f"data.frame_store={tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match=r"data.frame_store: no such frame-store directory: .*nowhere"):
        training.prepare_task(cfg)


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_check_storage_refuses_unwritable_paths(tmp_path, where):
    if where == "under_a_file":
        (tmp_path / "file").write_text("")
        path = str(tmp_path / "file" / "runs")
    else:
        path = "/proc/clipbert_runs"
    with pytest.raises(PermissionError, match="is not writable"):
        training.check_storage(path)


def test_check_storage_creates_a_missing_directory(tmp_path):
    training.check_storage(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()


# ----------------------------------------------------------------------------------- Ray Train
def test_fixed_cpus_per_worker_skips_the_placement_check(ray_local, tiny_corpus):
    """Autoscaling clusters: a fixed train.cpus_per_worker is used as is, even beyond today's cluster."""
    cfg = tiny_corpus.config("synthetic_tiny", "train.num_workers=8", "optim.batch_size=1")
    task = training.prepare_task(cfg)
    with pytest.raises(ValueError, match="cannot be placed"):
        training.build_trainer(cfg, task, storage_path="/tmp/unused", name="x")
    cfg = tiny_corpus.config("synthetic_tiny", "train.num_workers=8", "optim.batch_size=1", "train.cpus_per_worker=4")
    trainer = training.build_trainer(cfg, task, storage_path="/tmp/unused", name="x")
    assert trainer.scaling_config.num_workers == 8
    assert trainer.scaling_config.resources_per_worker["CPU"] == 4


def test_a_trial_config_reaches_the_data_stage_the_schedule_and_the_workers(ray_local, tiny_corpus):
    """What a sweep trial sets (sampling, batch size, epochs, model) is what its clips, steps and workers use."""
    from clipbert.config import load_config_tree
    from clipbert.sweep.space import trial_config

    tree = load_config_tree("synthetic_tiny", [f"data.root={tiny_corpus.root}", "train.num_workers=1"])
    cfg = trial_config(tree, {"sampling.train_n_clips": 3, "sampling.frames_per_clip": 1, "optim.batch_size": 4,
                              "optim.num_epochs": 3, "model.consensus": "max"})
    task = training.prepare_task(cfg)
    trainer = training.build_trainer(cfg, task, storage_path="/tmp/unused", name="x", cluster={"CPU": 1.0})
    assert trainer.train_loop_config["cfg"] == config_to_dict(cfg)  # the workers' config
    assert trainer.train_loop_config["total_steps"] == 3 * (len(task.train) // 4)  # the schedule
    batch = trainer.datasets["train"].take_batch(4)  # the data stage
    assert batch["frames"].shape[:3] == (4, 3, 1)  # (B, N, T, 3, S, S)
    assert trainer.scaling_config.resources_per_worker["CPU"] == 0.5  # planned against the given share


# ------------------------------------------------------------------------------- inputs checked before launch
def _break_input(corpus, tmp_path, what: str) -> list[str]:
    """Config overrides that point one input of the tiny corpus at something broken."""
    import shutil

    import torch

    from clipbert.data.frames import SHARDS_DIR

    if what == "garbage_pt":
        (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
        return [f"model.init_checkpoint={tmp_path / 'w.pt'}"]
    if what == "foreign_pt":
        torch.save({"some.other.model": torch.zeros(2)}, tmp_path / "other.pt")
        return [f"model.init_checkpoint={tmp_path / 'other.pt'}"]
    if what == "store_without_shard":
        shutil.copytree(corpus.frames, tmp_path / "frames")
        shutil.rmtree(next((tmp_path / "frames" / SHARDS_DIR).iterdir()))
        return [f"data.frame_store={tmp_path / 'frames'}"]
    (tmp_path / "empty").mkdir()
    return {
        "missing_init_checkpoint": [f"model.init_checkpoint={tmp_path / 'gone.pt'}"],
        "checkpoint_dir_without_weights": [f"model.init_checkpoint={tmp_path / 'empty'}"],
        "not_a_frame_store": [f"data.frame_store={tmp_path / 'empty'}"],
        "missing_tokenizer": [f"data.tokenizer={tmp_path / 'vocab.txt'}"],
        "empty_tokenizer_dir": [f"data.tokenizer={tmp_path / 'empty'}"],
        "annotation_is_a_directory": [f"data.val_file={tmp_path / 'empty'}"],
        "missing_val_mc_file": [f"data.val_mc_file={tmp_path / 'mc.jsonl'}"],
        "missing_bert_dir": [f"model.bert_dir={tmp_path / 'bert'}"],
        "bert_dir_without_weights": [f"model.bert_dir={tmp_path / 'empty'}"],
    }[what]


BROKEN_INPUTS = [
    ("missing_init_checkpoint", FileNotFoundError, r"model.init_checkpoint: no such file or directory: '.*gone.pt'"),
    ("garbage_pt", ValueError, r"model.init_checkpoint: .*w.pt: not a readable checkpoint: "),
    ("foreign_pt", ValueError, r"model.init_checkpoint: .*other.pt: none of its 1 tensors is a ClipBERT weight"),
    ("checkpoint_dir_without_weights", FileNotFoundError,
     r"model.init_checkpoint: no such checkpoint file: .*model.safetensors"),
    ("not_a_frame_store", ValueError, r"data.frame_store: .*empty: not a frame store \(no store.json\)"),
    ("store_without_shard", ValueError, r"data.frame_store: .*frames: 1 shard\(s\) named by the manifest are missing"),
    ("missing_tokenizer", FileNotFoundError, r"data.tokenizer: no such file or directory: '.*vocab.txt'"),
    ("empty_tokenizer_dir", ValueError, r"data.tokenizer: no tokenizer at .*empty"),
    ("annotation_is_a_directory", FileNotFoundError, r"data.val_file: '.*empty' is a directory, not a file"),
    ("missing_val_mc_file", FileNotFoundError, r"data.val_mc_file: no such annotation file: '.*mc.jsonl'"),
    ("missing_bert_dir", FileNotFoundError, r"model.bert_dir: no such directory: '.*bert'"),
    ("bert_dir_without_weights", FileNotFoundError, r"model.bert_dir: .*empty: no model.safetensors or pytorch_model"),
]


@pytest.mark.parametrize("what, error, message", BROKEN_INPUTS, ids=[b[0] for b in BROKEN_INPUTS])
def test_prepare_task_names_a_broken_input_in_one_line(tiny_corpus, tmp_path, what, error, message):
    cfg = tiny_corpus.config("synthetic_tiny", *_break_input(tiny_corpus, tmp_path, what))
    with pytest.raises(error, match=message) as info:
        training.prepare_task(cfg)
    assert "\n" not in str(info.value)


def test_prepare_task_accepts_a_checkpoint_directory_to_start_from(tiny_corpus, tmp_path):
    from conftest import tiny_checkpoint

    cfg = tiny_corpus.config("synthetic_tiny")
    checkpoint = tiny_checkpoint(cfg, tmp_path / "ckpt", seed=0)
    task = training.prepare_task(tiny_corpus.config("synthetic_tiny", f"model.init_checkpoint={checkpoint}"))
    assert len(task.train) == len(training.prepare_task(cfg).train)


def test_unreadable_annotation_file_is_refused(tiny_corpus, tmp_path):
    import os

    path = tmp_path / "train.jsonl"
    path.write_text((tiny_corpus.root / "txt" / "retrieval_train.jsonl").read_text())
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("this user reads files whatever their permissions (root)")
    with pytest.raises(PermissionError, match=r"data.train_file: .*train.jsonl: cannot be read: Permission denied"):
        training.prepare_task(tiny_corpus.config("synthetic_tiny", f"data.train_file={path}"))


class _FakeTrainer:
    """Stands in for a TorchTrainer: each fit() raises the next queued error, or returns a result."""

    def __init__(self, outcomes: list):
        self.outcomes = outcomes

    def fit(self):
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _controller_error(message: str):
    from ray.train import ControllerError

    return ControllerError(RuntimeError(message))


def test_a_controller_failure_starts_the_run_once_more_and_then_gives_up(monkeypatch, tmp_path):
    from types import SimpleNamespace

    done = SimpleNamespace(error=None)
    outcomes = [_controller_error("placement group was removed"), done]
    built = []
    monkeypatch.setattr(training, "build_trainer", lambda *a, **k: built.append(k["name"]) or _FakeTrainer(outcomes))
    cfg = load_config("tiny_ret")
    fit = training._fit_resuming(cfg, None, storage_path=str(tmp_path), name="run", cluster=None, callbacks=())
    assert fit is done and built == ["run", "run"]  # started again under the same name: it resumes

    outcomes[:] = [_controller_error("first"), _controller_error("second")]
    with pytest.raises(Exception, match="second"):
        training._fit_resuming(cfg, None, storage_path=str(tmp_path), name="run", cluster=None, callbacks=())
    outcomes[:] = [ValueError("a worker's own error")]  # Ray Train's max_failures already covered those
    with pytest.raises(ValueError, match="own error"):
        training._fit_resuming(cfg, None, storage_path=str(tmp_path), name="run", cluster=None, callbacks=())
    assert outcomes == []
