"""Tests of clipbert/sweep/report.py: ranking, the trials table, best.yaml and best/, the plot, from made-up trials."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from clipbert.model.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from clipbert.config import config_to_dict, load_config
from clipbert.sweep.report import TrialRecord, format_table, ranked, trials_table, write_outputs


def _finished(tmp_path, trial_id: str, lr: float, curve: list[tuple[int, float]], test_r1: float) -> TrialRecord:
    """A completed trial whose run exported a checkpoint (a config and stand-in weights)."""
    best = tmp_path / "runs" / trial_id / "best"
    best.mkdir(parents=True)
    cfg = load_config("synthetic_tiny", [f"optim.lr={lr}", "data.root=/data"])
    (best / CONFIG_NAME).write_text(json.dumps(config_to_dict(cfg)))
    (best / WEIGHTS_NAME).write_bytes(trial_id.encode())
    step, value = max(curve, key=lambda c: c[1])
    final = {"val": {"t2v_r1": value, "step": step}, "test": {"t2v_r1": test_r1, "t2v_r5": 80.0}, "step": step,
             "exported": str(best)}
    return TrialRecord(trial_id, {"optim.lr": lr}, "completed", curve, final, run_dir=str(best.parent))


@pytest.fixture
def records(tmp_path) -> list[TrialRecord]:
    return [
        TrialRecord("c", {"optim.lr": 1e-5}, "stopped_early", [(3, 30.0), (6, 35.0)], None),
        _finished(tmp_path, "a", 1e-4, [(3, 20.0), (6, 40.0), (9, 30.0)], test_r1=38.0),
        TrialRecord("d", {"optim.lr": 1.0}, "errored", [], None, error="ValueError: no step"),
        _finished(tmp_path, "b", 3e-4, [(3, 50.0), (6, 45.0), (9, 45.0)], test_r1=41.0),
    ]


def test_completed_trials_rank_first_then_stopped_then_errored(records):
    assert [r.trial_id for r in ranked(records, "max")] == ["b", "a", "c", "d"]
    assert [r.trial_id for r in ranked(records, "min")] == ["a", "b", "c", "d"]  # a's best is 20 when lower wins


def test_trials_table_has_one_ranked_row_per_trial(records):
    table = trials_table(records, "t2v_r1", "max")
    assert list(table["trial_id"]) == ["b", "a", "c", "d"] and list(table["rank"]) == [1, 2, 3, 4]
    assert list(table["status"]) == ["completed", "completed", "stopped_early", "errored"]
    assert list(table["stopped_early"]) == [False, False, True, False]
    assert list(table["steps"]) == [9, 9, 6, 0]
    assert list(table["best_t2v_r1"][:3]) == [50.0, 40.0, 35.0] and pd.isna(table["best_t2v_r1"][3])
    assert list(table["last_t2v_r1"][:3]) == [45.0, 30.0, 35.0]
    assert list(table["test_t2v_r1"][:2]) == [41.0, 38.0] and table["test_t2v_r1"][2:].isna().all()
    assert table["error"][3] == "ValueError: no step"
    text = format_table(table, "t2v_r1", ["optim.lr"])
    assert text.splitlines()[1].split()[:4] == ["1", "b", "0.0003", "completed"]


def test_outputs_export_the_best_completed_trial(tmp_path, records):
    out = tmp_path / "sweep"
    out.mkdir()
    write_outputs(out, records, metric="t2v_r1", mode="max", max_steps=9)
    assert len(pd.read_parquet(out / "trials.parquet")) == 4
    assert (out / "best" / WEIGHTS_NAME).read_bytes() == b"b"
    cfg = load_config(str(out / "best.yaml"))  # jobs/train.py --config best.yaml reads it as is
    assert cfg.optim.lr == 3e-4 and cfg.data.train_file == "/data/txt/retrieval_train.jsonl"
    header = (out / "best.yaml").read_text().splitlines()[0]
    assert header.startswith("# Best trial b") and "validation t2v_r1 50 at step 3, test t2v_r1 41" in header
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_no_completed_trial_writes_no_best(tmp_path, records):
    write_outputs(tmp_path, [records[0], records[2]], metric="t2v_r1", mode="max", max_steps=9)
    assert (tmp_path / "trials.parquet").exists() and not (tmp_path / "best.yaml").exists()
    assert not (tmp_path / "best").exists()


def test_best_yaml_of_a_checkpoint_saved_with_earlier_key_names_loads(tmp_path):
    record = _finished(tmp_path, "a", 1e-4, [(3, 20.0)], test_r1=10.0)
    path = tmp_path / "runs" / "a" / "best" / CONFIG_NAME
    saved = json.loads(path.read_text())
    saved["sampling"]["num_frames"] = saved["sampling"].pop("frames_per_clip")
    path.write_text(json.dumps(saved))
    out = tmp_path / "sweep"
    out.mkdir()
    write_outputs(out, [record], metric="t2v_r1", mode="max", max_steps=3)
    assert load_config(str(out / "best.yaml")).sampling.frames_per_clip == 2
