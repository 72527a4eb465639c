"""Tests for two-stage search (clipbert/retrieval/search.py, jobs/search.py, jobs/build_index.py)."""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from conftest import first_captions, tiny_checkpoint, tiny_index

from clipbert.model.checkpoint import build_model, checkpoint_hash, save_checkpoint
from clipbert.training.evaluation import retrieval_scores
from clipbert.retrieval.index import VideoIndex
from clipbert.retrieval.search import Searcher

CPU = torch.device("cpu")
N_CLIPS = 3


@pytest.fixture(scope="module")
def built(tiny_corpus, tmp_path_factory):
    """A random tiny model, an index over the 20 train videos (video granularity) and a Searcher on it."""
    tmp = tmp_path_factory.mktemp("search")
    cfg = tiny_corpus.config()
    ckpt = tiny_checkpoint(cfg, tmp / "ckpt", seed=0)
    videos = sorted(tiny_corpus.train_ids)
    tiny_index(cfg, ckpt, videos, tmp, n_clips=N_CLIPS)
    return Searcher(tmp / "index"), cfg, ckpt, videos, tmp


def test_rerank_over_the_whole_gallery_equals_all_pairs(built, tiny_corpus):
    searcher, cfg, _, videos, _ = built
    captions = first_captions(tiny_corpus, videos[:5])
    hits = searcher.search(captions, k=len(videos), rerank=len(videos))
    scores, _ = retrieval_scores(searcher.model, searcher.cfg, videos, captions, CPU, n_clips=N_CLIPS)
    for q, row in enumerate(hits):
        got = np.array([h.rerank_score for h in row])
        assert np.all(np.diff(got) <= 1e-7)  # ranked by cross score
        expected = np.sort(scores[q])[::-1]
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert {h.video_id for h in row} == set(videos)


def test_dual_hits_below_the_rerank_depth(built, tiny_corpus):
    searcher, _, _, videos, _ = built
    hits = searcher.search(first_captions(tiny_corpus, videos[:1]), k=6, rerank=2)[0]
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5, 6]
    assert all(h.rerank_score is not None for h in hits[:2]) and all(h.rerank_score is None for h in hits[2:])
    dual_tail = [h.dual_score for h in hits[2:]]
    assert dual_tail == sorted(dual_tail, reverse=True)


def test_bad_queries_and_clamped_depths(built, caplog):
    searcher, _, _, videos, _ = built
    with pytest.raises(ValueError, match="empty query"):
        searcher.search(["   "])
    with caplog.at_level(logging.INFO):
        long = " ".join(["red circle"] * 40)
        hits = searcher.search([long, long], k=500, rerank=400)
        searcher.search([long])
    assert len(hits[0]) == len(videos)
    assert caplog.text.count("are truncated") == 1  # said once
    assert f"k=500 is more than the {len(videos)} videos" in caplog.text
    with pytest.raises(ValueError, match="k must be >= 1"):
        searcher.search(["red"], k=0)
    with pytest.raises(ValueError, match="rerank must be >= 0, got -1"):
        searcher.search(["red"], rerank=-1)
    assert searcher.depths(3, 0) == (3, 0) and searcher.depths(500, 2) == (len(videos), 2)


def test_another_checkpoint_is_named_with_both_hashes(built, caplog):
    searcher, cfg, ckpt, _, tmp = built
    other = tiny_checkpoint(cfg, tmp / "other", seed=1)
    with caplog.at_level(logging.WARNING):
        Searcher(tmp / "index", checkpoint=other)
    assert checkpoint_hash(ckpt) in caplog.text and checkpoint_hash(other) in caplog.text


def test_the_rerank_score_adds_the_weighted_dual_score(built, tiny_corpus, tmp_path):
    searcher, cfg, _, videos, tmp = built
    ckpt = tiny_checkpoint(cfg, tmp_path / "ckpt", seed=0)  # the index's weights, now with a chosen weight
    (tmp_path / "ckpt" / "rerank.json").write_text(json.dumps({"fuse_weight": 4.0}))
    fused = Searcher(tmp / "index", checkpoint=ckpt)
    assert (searcher.fuse_weight, fused.fuse_weight) == (0.0, 4.0)
    query = first_captions(tiny_corpus, videos[:1])
    plain, mixed = searcher.search(query, k=4, rerank=4)[0], fused.search(query, k=4, rerank=4)[0]
    by_id = {h.video_id: h for h in plain}
    for h in mixed:
        assert h.rerank_score == pytest.approx(by_id[h.video_id].rerank_score + 4.0 * h.dual_score, abs=1e-4)


def test_search_job_prints_hits_and_writes_json(built, capsys, tmp_path):
    from jobs.search import main

    searcher, *_ = built
    index_dir = str(built[4] / "index")
    out = tmp_path / "hits.json"
    assert main(["--index", index_dir, "--query", "a red circle moves left", "--k", "3", "--rerank", "2",
                 "--json", str(out)]) == 0
    assert "a red circle moves left" in capsys.readouterr().out
    hits = json.loads(out.read_text())[0]["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[2]["rerank_score"] is None
    assert main(["--index", index_dir, "--query", " "]) == 2
    assert main(["--index", str(tmp_path / "nowhere"), "--query", "red"]) == 2
    assert main(["--index", index_dir]) == 2


@pytest.mark.slow
def test_build_index_job_end_to_end(ray_local, built, tiny_corpus, tmp_path, capsys):
    from jobs.build_index import main

    _, _, ckpt, _, _ = built
    out = tmp_path / "index"
    args = ["--checkpoint", ckpt, "--frame-store", str(tiny_corpus.frames), "--output", str(out),
            "--granularity", "clips", "--clips", "2", "--videos", str(tiny_corpus.root / "txt" / "retrieval_val.jsonl")]
    assert main(args) == 0
    index = VideoIndex.load(out)
    assert index.video_ids == sorted(tiny_corpus.val_ids)
    assert (index.info["vectors"], index.info["provenance"]["n_clips"]) == (2 * len(tiny_corpus.val_ids), 2)
    assert index.info["provenance"]["checkpoint_hash"] == checkpoint_hash(ckpt)
    assert "recall@10 1.000" in capsys.readouterr().out
    assert main(args) == 0  # a re-run embeds nothing new
    assert "0 embedded, 0 failed, 4 already done" in capsys.readouterr().out


def test_build_index_job_refuses_bad_input_before_ray(built, tiny_corpus, tmp_path, capsys):
    from jobs.build_index import main

    _, cfg, ckpt, _, tmp = built
    plain = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, contrastive=False))
    no_heads = save_checkpoint(build_model(plain.model)[0], plain, tmp_path / "plain")
    base = ["--frame-store", str(tiny_corpus.frames), "--output", str(tmp_path / "i")]
    assert main(["--checkpoint", str(no_heads), *base]) == 2
    assert "model.contrastive=true" in capsys.readouterr().err
    assert main(["--checkpoint", ckpt, "--frame-store", str(tmp_path / "none"), "--output", str(tmp_path / "i")]) == 2
    assert "none" in capsys.readouterr().err
    assert main(["--checkpoint", ckpt, *base, "--memory-budget", "lots"]) == 2
    assert "lots" in capsys.readouterr().err


@pytest.mark.slow
def test_build_index_job_exits_1_when_no_video_could_be_embedded(ray_local, built, tiny_corpus, tmp_path):
    import shutil

    from conftest import corrupt_frames

    from jobs.build_index import main

    _, _, ckpt, _, _ = built
    store = tmp_path / "frames"
    shutil.copytree(tiny_corpus.frames, store)
    bad = tiny_corpus.val_ids[0]
    corrupt_frames(store, bad)
    (tmp_path / "ids.txt").write_text(bad + "\n")
    assert main(["--checkpoint", ckpt, "--frame-store", str(store), "--output", str(tmp_path / "index"),
                 "--videos", str(tmp_path / "ids.txt")]) == 1


def test_search_job_writes_a_self_contained_contact_sheet(built, tmp_path, capsys):
    import base64
    import re

    from clipbert.data.frames import FrameStore
    from jobs.search import main

    searcher, _, _, videos, tmp = built
    out = tmp_path / "sheet.html"
    queries = ["a red circle moves left", "a blue square"]
    assert main(["--index", str(tmp / "index"), "--query", queries[0], "--query", queries[1], "--k", "3",
                 "--rerank", "1", "--html", str(out)]) == 0
    assert f"contact sheet: {out}" in capsys.readouterr().out
    page = out.read_text()
    assert all(f'data-query="{q}"' in page for q in queries) and "<form" not in page
    hit_ids = re.findall(r'<li class="hit" data-video-id="([^"]+)"', page)
    assert len(hit_ids) == 2 * 3 and set(hit_ids) <= set(videos)
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 2 * 3 * N_CLIPS * searcher.cfg.sampling.frames_per_clip
    assert all(s.startswith("data:image/jpeg;base64,") for s in srcs)  # nothing to fetch
    store = FrameStore(searcher.cfg.data.frame_store)
    first = base64.b64decode(srcs[0].split(",", 1)[1])
    assert first == store.get_jpeg(hit_ids[0], [0])[0]  # the first clip starts at frame 0
    assert main(["--index", str(tmp / "index"), "--eval", "x.jsonl", "--html", str(out)]) == 2
