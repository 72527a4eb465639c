"""Tests of clipbert/sweep/space.py: parsing and checking a space, applying a trial's values, schedule corners."""

from __future__ import annotations

import pytest

from clipbert.config import load_config_tree
from clipbert.sweep.space import Dimension, apply_params, load_space, parse_dimension, schedule_corners, trial_config


def test_space_file_parses_every_distribution(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {loguniform: [1.0e-5, 1.0e-3]}\n"
                    "optim.cnn_lr: {uniform: [1e-5, 2e-4]}\n"  # YAML reads 1e-5 (no dot) as a string
                    "sampling.train_n_clips: {choice: [1, 2, 4]}\n"
                    "sampling.frames_per_clip: {randint: [1, 4]}\n"
                    "model.consensus: {grid: [mean, max, lse]}\n")
    assert load_space(path) == [
        Dimension("optim.lr", "loguniform", (1e-5, 1e-3)),
        Dimension("optim.cnn_lr", "uniform", (1e-5, 2e-4)),
        Dimension("sampling.train_n_clips", "choice", (1, 2, 4)),
        Dimension("sampling.frames_per_clip", "randint", (1, 4)),
        Dimension("model.consensus", "grid", ("mean", "max", "lse")),
    ]


@pytest.mark.parametrize("key, spec, message", [
    ("optim.lrr", {"choice": [1e-4]}, "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
    ("optim.lr", {"gaussian": [0, 1]}, "unknown distribution 'gaussian'"),
    ("optim.lr", [1e-4, 2e-4], "expected one distribution"),
    ("optim.lr", {"loguniform": [1e-3, 1e-5]}, r"low < high"),
    ("optim.lr", {"loguniform": [0.0, 1e-3]}, "must be > 0"),
    ("optim.lr", {"uniform": [1e-5]}, r"needs \[low, high\]"),
    ("optim.lr", {"choice": []}, "non-empty list"),
    ("optim.batch_size", {"uniform": [2, 8]}, "uniform draws floats but the key is a int"),
    ("optim.batch_size", {"choice": [2, 2.5]}, "optim.batch_size: 2.5 is not a int"),
    ("sampling.strategy", {"randint": [0, 3]}, "randint draws ints but the key is a str"),
])
def test_bad_dimensions_name_the_key_and_the_fault(key, spec, message):
    with pytest.raises(ValueError, match=message):
        parse_dimension(key, spec)


def test_bad_space_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--space: no such file"):
        load_space(tmp_path / "missing.yaml")
    path = tmp_path / "space.yaml"
    for text in ("[1, 2]", "", "optim.lr: {choice: [1e-4]\n"):
        path.write_text(text)
        with pytest.raises(ValueError, match=str(path)):
            load_space(path)
    path.write_text("optim.lr: {choice: [1.0e-4]}\nsampling.train_n_clip: {choice: [1, 2]}\n")
    with pytest.raises(ValueError, match=r"space.yaml: unknown config key 'sampling.train_n_clip'"):
        load_space(path)


def test_trial_values_reach_the_config_as_their_schema_types():
    import numpy as np

    tree = load_config_tree("synthetic_tiny", ["data.root=/data"])
    cfg = trial_config(tree, {"optim.lr": np.float64(2e-4), "sampling.train_n_clips": np.int64(4),
                              "model.consensus": "max", "optim.num_epochs": 3})
    assert (cfg.optim.lr, cfg.sampling.train_n_clips, cfg.model.consensus, cfg.optim.num_epochs) == (2e-4, 4, "max", 3.0)
    assert type(cfg.sampling.train_n_clips) is int and type(cfg.optim.num_epochs) is float
    assert cfg.data.train_file == "/data/txt/retrieval_train.jsonl"  # data paths resolved per trial
    assert tree["optim"]["lr"] == 3.0e-4  # the base tree is left as it was
    with pytest.raises(ValueError, match="model.consensus must be one of"):
        trial_config(tree, {"model.consensus": "median"})


def test_schedule_corners_cover_the_longest_and_shortest_schedules():
    tree = load_config_tree("synthetic_tiny")
    dims = [Dimension("optim.batch_size", "choice", (2, 8, 4)), Dimension("optim.num_epochs", "uniform", (1.0, 3.0)),
            Dimension("optim.lr", "loguniform", (1e-5, 1e-3))]  # not a schedule key: no corners of its own
    corners = schedule_corners(tree, dims)
    assert sorted((c["optim"]["batch_size"], c["optim"]["num_epochs"]) for c in corners) == [
        (2, 1.0), (2, 3.0), (4, 1.0), (4, 3.0), (8, 1.0), (8, 3.0)]
    assert apply_params(tree, {}) == tree
