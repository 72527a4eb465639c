"""Storage faults without Ray: a full LMDB map (grown, or the shard failed cleanly and redone) and a corrupt newest
checkpoint at resume (dropped with a warning, the previous good one restored). Each checks a clear message naming
the place, that nothing half-written counts as done, and that the redo gives the result of a clean run. The disk-full
drills, which need Ray, share the cluster of test_fault_drills.py."""

from __future__ import annotations

import errno
import json

import pytest
from conftest import decode_videos
from drills import (
    STORE_OPTIONS,
    clean_store,
    complete_shard_ids,
    snapshot,
    store_contents,
    write_videos,
)

from clipbert.data import frames as fs
from pipelines.preprocess import FrameStoreSink


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return write_videos(tmp_path_factory.mktemp("videos"), 6)


@pytest.fixture(scope="module")
def clean(videos, tmp_path_factory):
    return clean_store(videos, tmp_path_factory.mktemp("clean") / "store")


# --------------------------------------------------------------------------------------------- LMDB map full
class _Ctx:
    task_idx = 0


def _sink_write(videos, root, shard_prefix="r000"):
    """What one preprocessing write task does (decode every video of `videos`, store them in one shard), in this
    process."""
    import pyarrow as pa

    rows = decode_videos(videos, STORE_OPTIONS)
    root.mkdir(exist_ok=True)
    fs.write_header(root, STORE_OPTIONS)
    return FrameStoreSink(str(root), shard_prefix).write([pa.Table.from_pydict(rows)], _Ctx())


def test_a_full_lmdb_map_is_grown_and_the_shard_stores_everything(videos, clean, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(fs, "MAP_SIZE", 32 * 1024)  # a few frames fill it
    out = tmp_path / "store"
    with caplog.at_level("INFO", logger="clipbert.data.frames"):
        _sink_write(videos, out)
    assert "LMDB map of shard r000-00000 full: grown to" in caplog.text
    fs.write_manifest(out, fs.read_shard_rows(out))
    assert store_contents(out) == store_contents(clean)


def test_a_shard_whose_map_cannot_grow_fails_cleanly_and_is_redone(videos, clean, tmp_path, monkeypatch):
    monkeypatch.setattr(fs, "MAP_SIZE", 32 * 1024)
    monkeypatch.setattr(fs, "MAX_MAP_SIZE", 64 * 1024)  # less than the six videos need
    out = tmp_path / "store"
    with pytest.raises(OSError, match=r"LMDB map of frame-store shard .*/r000-00000 full at 65536 bytes .*store "
                                      r"fewer videos per shard") as info:
        _sink_write(videos, out)
    assert info.value.errno == errno.ENOSPC and "\n" not in str(info.value)
    assert complete_shard_ids(out) == []  # the shard never got its rows: nothing counts as stored
    assert fs.remove_incomplete_shards(out) == ["r000-00000"]  # what a re-run does first
    monkeypatch.setattr(fs, "MAX_MAP_SIZE", 1 << 30)
    _sink_write(videos, out, "r001")
    fs.write_manifest(out, fs.read_shard_rows(out))
    assert store_contents(out) == store_contents(clean)


# ------------------------------------------------------------------------------------- a corrupt checkpoint
def _fake_run(tiny_corpus, run, steps):
    """A run directory as Ray Train leaves it: checkpoints of `steps` (weights, config, train state) and its
    snapshot, the last one the latest."""
    import torch
    from conftest import tiny_checkpoint

    from clipbert.training.loop import STATE_NAME

    results = []
    for step in steps:
        name = f"checkpoint_{step:04d}"
        tiny_checkpoint(tiny_corpus.config(), run / name, seed=step)
        torch.save({"step": step, "epoch": 1, "optimizer": {}, "scaler": {}}, run / name / STATE_NAME)
        results.append({"version": 0, "checkpoint_dir_name": name, "metrics": {"step": step, "t2v_r1": 10.0 * step}})
    state = {"ray_version": "2.60.0", "checkpoint_results": results, "checkpoint_report_indices": list(range(len(steps))),
             "latest_checkpoint_result": results[-1], "pending_training_results": [], "pending_validation_specs": [],
             "current_report_index": len(steps), "validated_checkpoint_dir_names": [],
             "timed_out_validation_checkpoint_dir_names": [], "failed_validation_checkpoint_dir_names": []}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(state))


@pytest.mark.parametrize("damage", ["truncated_weights", "garbage_train_state", "missing_config"])
def test_a_corrupt_newest_checkpoint_is_dropped_with_a_warning(tiny_corpus, tmp_path, caplog, damage):
    """What a resuming run does first (clipbert/training/run.py): the newest checkpoint cannot be loaded, so it is moved
    aside and the snapshot's latest becomes the previous good one (test_fault_drills.py runs it end to end)."""
    from clipbert.training import run as training

    run = tmp_path / "run"
    _fake_run(tiny_corpus, run, [2, 4, 5])
    newest = run / "checkpoint_0005"
    if damage == "truncated_weights":
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "garbage_train_state":
        (newest / "train_state.pt").write_bytes(b"\0" * 100)
    else:
        (newest / "config.json").unlink()
    with caplog.at_level("WARNING", logger="clipbert.training.run"):
        assert training.drop_corrupt_checkpoints(str(tmp_path), "run") == ["checkpoint_0005"]
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "clipbert.training.run"]
    assert warning.startswith(f"checkpoint checkpoint_0005 of run {run} is corrupt (")
    assert warning.endswith("moved to corrupt_checkpoints/; resuming from checkpoint_0004")
    state = snapshot(run)
    assert state["latest_checkpoint_result"]["checkpoint_dir_name"] == "checkpoint_0004"
    assert [r["checkpoint_dir_name"] for r in state["checkpoint_results"]] == ["checkpoint_0002", "checkpoint_0004"]
    assert state["checkpoint_report_indices"] == [0, 1]
    assert (run / "corrupt_checkpoints" / "checkpoint_0005").is_dir() and not newest.exists()
    assert training.drop_corrupt_checkpoints(str(tmp_path), "run") == []  # the rest is good: nothing more to do


def test_when_every_checkpoint_is_corrupt_the_run_starts_over_and_says_so(tiny_corpus, tmp_path, caplog):
    from clipbert.training import run as training

    run = tmp_path / "run"
    _fake_run(tiny_corpus, run, [2, 4])
    for name in ("checkpoint_0002", "checkpoint_0004"):
        (run / name / "model.safetensors").write_bytes(b"not safetensors")
    with caplog.at_level("WARNING", logger="clipbert.training.run"):
        assert training.drop_corrupt_checkpoints(str(tmp_path), "run") == ["checkpoint_0004", "checkpoint_0002"]
    last = [r.getMessage() for r in caplog.records if r.name == "clipbert.training.run"][-1]
    assert last.endswith("resuming from the start (no other checkpoint is left)")
    assert snapshot(run)["latest_checkpoint_result"] is None and snapshot(run)["checkpoint_results"] == []
    assert training.drop_corrupt_checkpoints(str(tmp_path / "new"), "run") == []  # a new run has no snapshot
