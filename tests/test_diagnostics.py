"""Tests of clipbert.training.diagnostics: the checkpoint a run chose, its test figures, training-set fit,
one-attribute grounding and CNN probe, the corpus figures behind them, and records filled only from their own run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_checkpoint

from clipbert.training import diagnostics
from clipbert.data.annotations import retrieval_eval_lists
from clipbert.synthetic.vocabulary import ATTRIBUTES
from clipbert.training.run import prepare_task

TEST_FIGURES = {"t2v_r1": 25.0}  # what the tiny run's final_metrics.json reports


@pytest.fixture(scope="module")
def tiny_run(tiny_corpus, tmp_path_factory) -> Path:
    """A finished run on the tiny corpus: its exported best/ (a randomly initialised synthetic_tiny model) and its
    final_metrics.json."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    tiny_checkpoint(tiny_corpus.config("synthetic_tiny"), run_dir / "best", seed=0)
    (run_dir / "final_metrics.json").write_text(json.dumps({"test": TEST_FIGURES, "step": 2}))
    return run_dir


def _finished(run_dir: Path) -> dict:
    return {"final_metrics": json.loads((run_dir / "final_metrics.json").read_text()), "curve": []}


def test_a_budget_stopped_run_is_scored_from_its_best_kept_checkpoint(tmp_path):
    for step in (100, 200, 300):
        d = tmp_path / f"checkpoint_{step}"
        d.mkdir()
        torch.save({"step": step}, d / "train_state.pt")
    curve = [{"step": 100, "t2v_r1": 10.0}, {"step": 200, "t2v_r1": 30.0}, {"step": 300, "t2v_r1": 20.0},
             {"step": 400, "t2v_r1": 50.0}]  # step 400's checkpoint was not kept
    assert diagnostics.best_kept_checkpoint(tmp_path, curve, "t2v_r1") == tmp_path / "checkpoint_200"
    assert diagnostics.best_kept_checkpoint(tmp_path / "none", curve, "t2v_r1") is None


def test_test_metrics_are_the_jobs_own_or_the_best_kept_checkpoint_scored_here(tiny_corpus, tiny_run, tmp_path):
    sets = [f"data.root={tiny_corpus.root}"]
    assert diagnostics.test_metrics(_finished(tiny_run), tiny_run, "synthetic_tiny", sets) == (TEST_FIGURES, 2)
    stopped = {"final_metrics": None, "curve": [{"step": 7, "t2v_r1": 1.0}]}
    assert diagnostics.test_metrics(stopped, tmp_path, "synthetic_tiny", sets) == (None, None)  # nothing kept
    kept = tmp_path / "checkpoint_7"
    tiny_checkpoint(tiny_corpus.config("synthetic_tiny"), kept, seed=0)
    torch.save({"step": 7}, kept / "train_state.pt")
    metrics, step = diagnostics.test_metrics(stopped, tmp_path, "synthetic_tiny", sets)
    assert step == 7 and 0 <= metrics["t2v_r1"] <= 100 and 0 <= metrics["mc_acc"] <= 100  # the test split scored


def test_a_record_is_filled_only_from_the_run_it_describes(tiny_corpus, tiny_run, tmp_path, capsys):
    sets = [f"data.root={tiny_corpus.root}"]
    record = {"preset": "synthetic_tiny", "curve": [], "test": {"t2v_r1": 99.0}, "test_step": 2}  # another run
    assert not diagnostics.fill_run_diagnostics("r.json", record, tiny_run, sets)
    assert "no longer holds this record's run; train_fit, grounding, colour_only_r1, cnn_probe left out" in \
        capsys.readouterr().out
    assert not set(diagnostics.DIAGNOSTICS) & set(record)
    record["test"] = TEST_FIGURES
    assert diagnostics.fill_run_diagnostics("r.json", record, tiny_run, sets)
    assert set(record["train_fit"]) == set(diagnostics.FIT_KEYS)
    assert all(0 <= v <= 100 for v in record["train_fit"].values())
    assert set(record["grounding"]) == {"cross", "dual"}
    assert all(set(g) <= set(diagnostics.GROUNDED) for g in record["grounding"].values())
    assert record["colour_only_r1"] == diagnostics.attribute_only_r1(tiny_corpus.root, ("color",))
    assert all(set(record["cnn_probe"][w]) == set(ATTRIBUTES) for w in ("start", "chosen"))
    assert "r.json: cnn_probe" in capsys.readouterr().out
    assert not diagnostics.fill_run_diagnostics("r.json", record, tiny_run, sets)  # nothing left to add


def test_grounding_counts_the_one_attribute_pairs_where_the_right_video_scores_higher(tiny_corpus, tiny_run,
                                                                                       monkeypatch):
    def scores(model, cfg, video_ids, captions, device):  # the cross-encoder always right, the dual always wrong
        _, _, gt = retrieval_eval_lists(prepare_task(cfg).test)  # each caption's video, as grounding lists them
        right = np.zeros((len(captions), len(video_ids)), dtype=np.float32)
        right[np.arange(len(captions)), gt] = 1.0
        return right, -right

    monkeypatch.setattr(diagnostics, "retrieval_scores", scores)
    # the tiny test split has no two videos that differ in one attribute: call them so by the order of their events
    monkeypatch.setattr(diagnostics, "only_attribute", lambda a, b: "" if a == b else ("color" if a < b else "shape"))
    sets = [f"data.root={tiny_corpus.root}"]
    out = diagnostics.grounding(_finished(tiny_run), tiny_run, "synthetic_tiny", sets)
    assert out == {"cross": {"color": 100.0, "shape": 100.0}, "dual": {"color": 0.0, "shape": 0.0}}
    stopped = {"final_metrics": None, "curve": []}
    assert diagnostics.grounding(stopped, tiny_run.parent / "none", "synthetic_tiny", sets) is None  # none kept


def test_word_grounding_is_filled_only_from_the_pretraining_a_record_describes(tmp_path, capsys):
    stills = tmp_path / "stills"
    pretrain = {"final_metrics": {"val": {"mlm_acc": 60.0}}, "corpus": "stills"}
    pretrain_dir = tmp_path / "pretrain"
    assert not diagnostics.fill_word_grounding("image_text_s0.json", pretrain, pretrain_dir, stills)  # no run there
    pretrain_dir.mkdir()
    (pretrain_dir / "final_metrics.json").write_text(json.dumps({"val": {"mlm_acc": 70.0}}))  # another run
    assert not diagnostics.fill_word_grounding("image_text_s0.json", pretrain, pretrain_dir, stills)
    assert capsys.readouterr().out.count("no longer holds this record's pretraining; word grounding left out") == 2
    assert "word_grounding" not in pretrain
    done = {**pretrain, "word_grounding": {"color": 75.0}}
    assert not diagnostics.fill_word_grounding("image_text_s0.json", done, pretrain_dir, stills)  # already there
    assert done["word_grounding"] == {"color": 75.0}


def test_only_attribute_aligns_the_events_the_way_that_differs_least():
    red, blue = ("red", "circle", "left"), ("blue", "square", "up")
    assert diagnostics.only_attribute([red, blue], [("green", "circle", "left"), blue]) == "color"
    assert diagnostics.only_attribute([red, blue], [blue, ("red", "cross", "left")]) == "shape"  # event order swapped
    assert diagnostics.only_attribute([red, blue], [("red", "circle", "up"), ("blue", "square", "down")]) == \
        "direction"
    assert diagnostics.only_attribute([red, blue], [("green", "cross", "left"), blue]) == ""  # colour and shape
    assert diagnostics.only_attribute([red, blue], [blue, red]) == ""  # the same events


def test_attribute_only_r1_counts_the_ties_that_the_blind_attributes_leave(tmp_path):
    from clipbert.synthetic.corpus import synthesize_corpus

    root = tmp_path / "corpus"
    info = synthesize_corpus(root, n_videos=12, seed=3, val_videos=1, test_videos=6, sizes=((32, 32),),
                             min_duration=0.2, max_duration=0.3)
    test = [v for v in info.videos if v.split == "test"]
    colours = [frozenset(e.color for e in v.events) for v in test]  # the two colours of a video always differ
    expected = 100.0 * sum(1 / colours.count(c) for c in colours) / len(test)
    assert expected < 100.0  # this seed's test videos share a colour pair
    assert diagnostics.attribute_only_r1(root, ("color",)) == pytest.approx(expected)
    assert diagnostics.attribute_only_r1(root, ("color", "shape", "direction")) == 100.0  # unique event pairs
    pairs = diagnostics.one_attribute_pairs(root)
    assert set(pairs) == {"color", "shape", "direction"}
    assert all(n % 2 == 0 for n in pairs.values())  # each pair of videos counts once as either's wrong video
    ties = sum(colours.count(c) - 1 for c in colours)  # ordered pairs of test videos with the same two colours
    assert pairs["shape"] + pairs["direction"] <= ties
