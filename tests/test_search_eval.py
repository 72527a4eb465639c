"""Tests of clipbert/retrieval/search_eval.py: the rows of the held-out protocol (dual encoder, two-stage at each
depth, all pairs), their scores on a hand-made gallery with a stand-in searcher, and on a real tiny index."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import first_captions, tiny_checkpoint, tiny_index
from index_data import synthetic_videos, write_emb

from clipbert.retrieval import search_eval
from clipbert.retrieval.embeddings import load_embeddings
from clipbert.retrieval.search import Searcher
from clipbert.retrieval.search_eval import ROW_KEYS, dual_rows, evaluate_search, two_stage_row

METHODS = ["dual (video)", "dual (clips, max)", "dual (clips, mean)", "dual (clips, lse)", "two-stage", "two-stage",
           "all-pairs cross-encoder", "all-pairs re-rank score"]


class _StandInSearcher:
    """A Searcher over the videos of an embeddings directory: caption "c<i>" is video i's own vector, candidates
    are the best inner products, and the cross-encoder ranks them the other way round."""

    def __init__(self, emb: Path, fuse_weight: float):
        self.vectors, ids = load_embeddings(emb, "video")  # (V, E)
        self.index = SimpleNamespace(video_ids=ids["video_id"].to_pylist(),
                                     info={"embeddings": str(emb), "granularity": "video", "logit_scale": 10.0})
        self.model, self.cfg, self.device, self.n_clips, self.fuse_weight = "model", "cfg", "cpu", 3, fuse_weight

    def encode(self, captions: list[str]) -> np.ndarray:
        return self.vectors[[int(c[1:]) for c in captions]]  # (Q, E)

    def candidates(self, query: np.ndarray, depth: int) -> tuple[list[list[str]], np.ndarray]:
        dual = query @ self.vectors.T  # (Q, V)
        order = np.argsort(-dual, axis=1)[:, :depth]
        return [[self.index.video_ids[j] for j in row] for row in order], np.take_along_axis(dual, order, 1)

    def rerank(self, captions: list[str], ids: list[list[str]], dual: np.ndarray) -> list[np.ndarray]:
        return [-row for row in dual]  # the dual order reversed


@pytest.fixture
def gallery(tmp_path) -> Path:
    """4 videos (vid0000..vid0003) in 2 shards and an annotation file with caption "c<i>" of video i."""
    write_emb(tmp_path / "emb", synthetic_videos(4, seed=0), shards=2)
    (tmp_path / "ann.jsonl").write_text("".join(json.dumps({"clip_name": f"vid{i:04d}", "caption": f"c{i}"}) + "\n"
                                                for i in range(4)))
    return tmp_path


@pytest.fixture
def all_pairs(monkeypatch, gallery) -> list[tuple]:
    """The arguments of each all-pairs scoring call; its cross-encoder scores reverse the dual order too."""
    calls = []
    vectors, _ = load_embeddings(gallery / "emb", "video")  # (V, E)

    def retrieval_scores(model, cfg, videos, captions, device, n_clips):
        calls.append((model, cfg, videos, captions, device, n_clips))
        return -(vectors[[int(c[1:]) for c in captions]] @ vectors.T), None  # (Q, V)

    monkeypatch.setattr(search_eval, "retrieval_scores", retrieval_scores)
    return calls


def _metrics(row: dict) -> tuple:
    return row["rerank"], row["cross_passes"], row["t2v_r1"], row["t2v_medr"]


def test_rows_of_each_method_on_a_stand_in_searcher(gallery, all_pairs):
    searcher = _StandInSearcher(gallery / "emb", fuse_weight=2.0)
    rows = evaluate_search(searcher, gallery / "ann.jsonl", depths=(4, 2, 100))  # depths past the gallery: 4
    assert [r["method"] for r in rows] == METHODS
    assert all(list(r) == list(ROW_KEYS) and r["seconds"] >= 0 for r in rows)
    assert _metrics(rows[0]) == (0, 0, 100.0, 1.0)  # each caption is its video's own vector
    assert _metrics(rows[4]) == (2, 4 * 2, 0.0, 2.0)  # re-ranked below the other candidate
    assert _metrics(rows[5]) == (4, 4 * 4, 0.0, 4.0)
    assert _metrics(rows[6]) == (4, 16, 0.0, 4.0)
    assert _metrics(rows[7]) == (4, 16, 100.0, 1.0)  # cross + 2 x dual = dual: the right order again
    videos = [f"vid{i:04d}" for i in range(4)]
    assert all_pairs == [("model", "cfg", videos, ["c0", "c1", "c2", "c3"], "cpu", 3)]


def test_without_all_pairs_only_dual_and_two_stage_rows(gallery, all_pairs):
    rows = evaluate_search(_StandInSearcher(gallery / "emb", 0.0), gallery / "ann.jsonl", depths=(1,),
                           all_pairs=False)
    assert [r["method"] for r in rows] == METHODS[:5] and rows[4]["rerank"] == 1
    assert all_pairs == []


def test_dual_rows_score_videos_and_their_clips_exactly(gallery):
    videos = synthetic_videos(4, seed=0)
    vectors, ids = load_embeddings(gallery / "emb", "video")
    query = vectors[[2, 0]]  # (Q=2, E)
    rows, full = dual_rows(query, str(gallery / "emb"), ids["video_id"].to_pylist(), np.array([2, 0]), 10.0, 0.5)
    assert [r["method"] for r in rows] == METHODS[:4] and all(r["seconds"] >= 0.5 for r in rows)
    np.testing.assert_allclose(full["video"], query @ vectors.T, rtol=1e-6)
    for q in range(2):
        for v, clips in enumerate(videos.values()):
            sims = clips @ query[q]  # (n_clips,)
            assert full["clips-max"][q, v] == pytest.approx(sims.max(), abs=1e-6)
            assert full["clips-mean"][q, v] == pytest.approx(sims.mean(), abs=1e-6)
            assert full["clips-lse"][q, v] == pytest.approx(np.log(np.exp(10.0 * sims).sum()) / 10.0, abs=1e-5)


@pytest.mark.parametrize("gt, rank", [(1, 1), (0, 2), (2, 3), (3, 4)])
def test_two_stage_ranks_candidates_by_cross_score_then_the_rest_in_dual_order(gt, rank):
    searcher = SimpleNamespace(candidates=lambda query, depth: ([["v0", "v1"]], np.array([[0.9, 0.8]])),
                               rerank=lambda captions, ids, dual: [np.array([-5.0, 5.0])])
    dual_full = np.array([[0.9, 0.8, 0.7, 0.6]])  # (Q=1, V=4)
    row = two_stage_row(searcher, ["c"], np.zeros((1, 2)), dual_full, {f"v{i}": i for i in range(4)},
                        np.array([gt]), 2, 0.0)
    assert (row["method"], row["rerank"], row["cross_passes"], row["t2v_medr"]) == ("two-stage", 2, 2, rank)
    assert dual_full.tolist() == [[0.9, 0.8, 0.7, 0.6]]  # left as it was


# ------------------------------------------------------------------------------------------ a real tiny index
@pytest.fixture(scope="module")
def built(tiny_corpus, tmp_path_factory) -> tuple[Searcher, list[str]]:
    """A Searcher on an index of the 20 train videos (video granularity) with a random tiny model; the videos."""
    tmp = tmp_path_factory.mktemp("search_eval")
    cfg = tiny_corpus.config()
    videos = sorted(tiny_corpus.train_ids)
    tiny_index(cfg, tiny_checkpoint(cfg, tmp / "ckpt", seed=0), videos, tmp, n_clips=3)
    return Searcher(tmp / "index"), videos


def test_evaluation_rows_and_full_depth_equal_all_pairs(built, tiny_corpus, tmp_path):
    searcher, videos = built
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"clip_name": v, "caption": c}) + "\n"
                           for v, c in zip(videos, first_captions(tiny_corpus, videos[:5]))))
    rows = evaluate_search(searcher, ann, depths=(2, 100))
    assert [r["method"] for r in rows] == METHODS
    assert all(set(r) == set(ROW_KEYS) for r in rows)
    two, full, margin, everything = rows[4], rows[5], rows[6], rows[7]
    assert (two["rerank"], two["cross_passes"]) == (2, 5 * 2)
    assert (full["rerank"], everything["cross_passes"]) == (len(videos), 5 * len(videos))
    for key in ("t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr"):
        assert full[key] == everything[key]
        assert margin[key] == everything[key]  # no rerank.json: the re-rank score is the ITM margin alone
