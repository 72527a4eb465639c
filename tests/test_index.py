"""Tests of the video index: clip aggregation, build/load/search at both granularities."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from index_data import DIM, build_video_index, normalise, standard_emb, standard_videos

from clipbert.retrieval import embeddings as ve
from clipbert.retrieval import index as vi
from clipbert.retrieval.index_files import IDS_FILE

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def videos() -> dict[str, np.ndarray]:
    return standard_videos()


@pytest.fixture(scope="module")
def emb(tmp_path_factory) -> Path:
    """40 ok videos and one failed row in 3 shards."""
    return standard_emb(tmp_path_factory.mktemp("emb"))


@pytest.fixture(scope="module")
def video_index(tmp_path_factory, emb) -> Path:
    """A video-granularity index directory over `emb`."""
    return build_video_index(emb, tmp_path_factory.mktemp("index_video"))


# ---------------------------------------------------------------------------------------- aggregation

@pytest.mark.parametrize("how, expected", [
    ("max", [[0.5, 0.3], [0.2, 0.9]]),
    ("mean", [[0.3, 0.3], [0.1, 0.9]]),
    ("lse", [[0.5 + math.log(1 + math.exp(-4)) / 10, 0.3], [0.2 + math.log(1 + math.exp(-2)) / 10, 0.9]]),
])
def test_aggregate_clip_scores(how, expected):
    sims = np.array([[0.1, 0.5, 0.3], [0.0, 0.2, 0.9]])  # (Q=2, C=3); clips 0, 1 of video 0, clip 2 of video 1
    got = vi.aggregate_clip_scores(sims, np.array([0, 0, 1]), how, scale=10.0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.dtype == np.float32 and got.shape == (2, 2)


def test_aggregate_lse_is_stable_and_bounded():
    sims = np.array([[0.9, 0.9, 0.9]])
    got = vi.aggregate_clip_scores(sims, np.array([0, 0, 0]), "lse", scale=1000.0)
    np.testing.assert_allclose(got, [[0.9 + math.log(3) / 1000]], rtol=1e-6)


# ----------------------------------------------------------------------------------- build and search

def test_build_load_round_trip(video_index, emb, videos):
    loaded = vi.VideoIndex.load(video_index)
    assert loaded.video_ids == sorted(videos)
    assert pq.read_table(video_index / IDS_FILE).equals(ve.load_embeddings(emb, "video")[1])
    info = loaded.info
    assert info["provenance"] == {"checkpoint": os.path.abspath("ck"), "N": 4} and info["factory"] == "Flat" and info["factory_auto"]
    assert (info["vectors"], info["videos"], info["dim"], info["granularity"]) == (40, 40, DIM, "video")
    assert info["recall_at_10"] == 1.0 and info["memory_estimate_bytes"] == 4 * DIM * 40
    assert math.isclose(info["logit_scale"], 1 / 0.07) and info["build_seconds"] > 0
    assert not list(video_index.glob(".*.tmp"))


def test_search_finds_own_video(video_index, emb):
    index = vi.VideoIndex.load(video_index)
    vectors, ids = ve.load_embeddings(emb, "video")
    found, scores = index.search(vectors[:5], k=3)
    assert [row[0] for row in found] == ids["video_id"].to_pylist()[:5]
    assert scores.shape == (5, 3) and scores.dtype == np.float32
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("how", ["max", "mean", "lse"])
def test_clip_search_equals_brute_force(tmp_path, emb, how):
    index = vi.VideoIndex.build(emb, tmp_path, granularity="clips", memory_budget="1G", logit_scale=20.0)
    clip_vectors, clip_ids = ve.load_embeddings(emb, "clips")
    names = clip_ids["video_id"].to_numpy(zero_copy_only=False)
    videos, owner = np.unique(names, return_inverse=True)
    queries = normalise(np.random.default_rng(5).standard_normal((6, DIM)))
    found, scores = index.search(queries, k=5, aggregate=how)

    brute = vi.aggregate_clip_scores(queries @ clip_vectors.T, owner, how, scale=20.0)  # (Q, V)
    order = np.argsort(-brute, axis=1, kind="stable")[:, :5]
    assert found == videos[order].tolist()
    np.testing.assert_allclose(scores, np.take_along_axis(brute, order, 1), rtol=1e-5)


def test_clip_search_on_ivf_reconstructs(tmp_path, emb):
    vi.VideoIndex.build(emb, tmp_path, granularity="clips", memory_budget="1G", factory="IVF2,Flat")
    index = vi.VideoIndex.load(tmp_path)
    assert index.info["search_parameter"]["name"] == "nprobe"
    assert faiss.extract_index_ivf(index.index).nprobe == index.info["search_parameter"]["value"]
    clip_vectors, clip_ids = ve.load_embeddings(emb, "clips")
    found, _ = index.search(clip_vectors[[0, 50]], k=2, aggregate="lse")
    assert [row[0] for row in found] == [clip_ids["video_id"][0].as_py(), clip_ids["video_id"][50].as_py()]


def test_k_is_clamped_once(video_index, caplog):
    index = vi.VideoIndex.load(video_index)
    queries = normalise(np.random.default_rng(3).standard_normal((2, DIM)))
    with caplog.at_level(logging.WARNING, logger="clipbert.retrieval.index"):
        found, scores = index.search(queries, k=100)
        index.search(queries, k=500)
    assert scores.shape == (2, 40) and all(len(row) == 40 and len(set(row)) == 40 for row in found)
    assert caplog.text.count("exceeds the 40 videos") == 1
