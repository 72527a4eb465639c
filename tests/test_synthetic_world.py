"""Tests of clipbert/synthetic/world.py: split sizes, unique event pairs and the variety of drawn video specs."""

from __future__ import annotations

import numpy as np
import pytest

from clipbert.synthetic.world import (
    DEFAULT_FPS,
    DEFAULT_SIZES,
    SPLITS,
    SynthesisConfig,
    VideoSpec,
    draw_specs,
    max_videos_per_split,
    unordered_key,
)


def _event_pairs(n: int, seed: int) -> list[VideoSpec]:
    cfg = SynthesisConfig(n_videos=n, seed=seed, val_videos=n // 5, test_videos=n // 5)
    return draw_specs(cfg, np.random.default_rng(seed))


def test_unordered_event_pairs_unique_per_split_and_events_differ_everywhere():
    specs = _event_pairs(1500, seed=0)  # 900 train videos: collisions certainly get re-drawn
    for split in SPLITS:
        keys = [unordered_key(v.events) for v in specs if v.split == split]
        assert len(keys) == len(set(keys))
    for v in specs:
        a, b = v.events
        assert a.color != b.color and a.shape != b.shape and a.direction != b.direction


def test_too_many_videos_for_one_split_is_an_error():
    with pytest.raises(ValueError, match="distinct unordered event pairs"):
        SynthesisConfig(n_videos=max_videos_per_split() + 10, val_videos=0, test_videos=0).validate()
    with pytest.raises(ValueError, match="no train videos"):
        SynthesisConfig(n_videos=5, val_videos=3, test_videos=2).validate()


def test_explicit_split_counts_for_a_learning_corpus():
    assert SynthesisConfig(n_videos=500, val_videos=50, test_videos=100).split_counts() == {
        "train": 350, "val": 50, "test": 100}
    assert SynthesisConfig(n_videos=500).split_counts() == {"train": 400, "val": 50, "test": 50}


def test_videos_vary_in_duration_size_and_fps():
    specs = draw_specs(SynthesisConfig(n_videos=300), np.random.default_rng(0))
    durations = [v.duration_s for v in specs]
    assert 2.0 - 0.1 <= min(durations) < 3.0 and 11.0 < max(durations) <= 12.0 + 0.1
    assert {(v.width, v.height) for v in specs} == set(DEFAULT_SIZES)
    assert {v.fps for v in specs} == set(DEFAULT_FPS)
    for v in specs:
        assert 0.24 <= v.shape_size / min(v.width, v.height) <= 0.34
