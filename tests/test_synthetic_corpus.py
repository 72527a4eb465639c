"""Tests of clipbert/synthetic/corpus.py and jobs/synthesize.py: determinism, corpus.json, reading it back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic_helpers import TINY, read_jsonl, tiny_mixed_corpus

from clipbert.synthetic.corpus import CorpusInfo, load_corpus, synthesize_corpus
from clipbert.synthetic.vocabulary import caption
from clipbert.synthetic.world import GIF_FPS, SynthesisConfig, draw_specs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> CorpusInfo:
    return tiny_mixed_corpus(tmp_path_factory.mktemp("corpus"))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, corpus):
    again = synthesize_corpus(tmp_path / "b", n_videos=10, seed=5, mixed_formats=True, val_videos=2,
                                test_videos=3, workers=2, **TINY)
    first, second = all_files(corpus.root), all_files(again.root)
    assert sorted(first) == sorted(second)
    assert len([k for k in first if k.startswith("videos/")]) == 10
    assert [k for k in first if first[k] != second[k]] == []


def test_other_seed_other_corpus(tmp_path, corpus):
    other = synthesize_corpus(tmp_path / "c", n_videos=10, seed=6, mixed_formats=True, val_videos=2,
                                test_videos=3, **TINY)
    assert all_files(other.root)["txt/retrieval_train.jsonl"] != all_files(corpus.root)["txt/retrieval_train.jsonl"]


def test_existing_corpus_needs_overwrite(tmp_path):
    synthesize_corpus(tmp_path, n_videos=3, seed=0, **TINY)
    with pytest.raises(FileExistsError, match="overwrite"):
        synthesize_corpus(tmp_path, n_videos=3, seed=0, **TINY)
    info = synthesize_corpus(tmp_path, n_videos=2, seed=0, overwrite=True, val_fraction=0, test_fraction=0, **TINY)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [v.filename for v in info.videos]


def test_corpus_json_matches_specs(corpus):
    doc = json.loads((corpus.root / "corpus.json").read_text())
    assert doc["options"]["seed"] == 5 and doc["split_counts"] == {"train": 5, "val": 2, "test": 3}
    for meta, spec in zip(doc["videos"], corpus.videos):
        assert meta["video_id"] == spec.video_id and meta["caption"] == caption(spec.events)
        assert meta["duration_s"] == pytest.approx(meta["num_frames"] / meta["fps"])
        assert [e["color"] for e in meta["events"]] == [e.color for e in spec.events]


def test_load_corpus_reads_back_the_specs(corpus):
    loaded = load_corpus(corpus.root)
    assert loaded.videos == corpus.videos and loaded.config == corpus.config and loaded.splits == corpus.splits
    assert loaded.video_path("video00003").exists()


def test_mixed_formats_present(corpus):
    assert {v.ext for v in corpus.videos} == {"mp4", "webm", "gif"}
    assert {p.suffix for p in (corpus.root / "videos").iterdir()} == {".mp4", ".webm", ".gif"}
    specs = draw_specs(SynthesisConfig(n_videos=1000, mixed_formats=True), np.random.default_rng(0))
    share = {ext: sum(v.ext == ext for v in specs) / 1000 for ext in ("gif", "webm")}
    assert share["gif"] == pytest.approx(0.15, abs=0.04) and share["webm"] == pytest.approx(0.15, abs=0.04)
    assert all(v.fps in GIF_FPS for v in specs if v.ext == "gif")


def test_job_writes_a_corpus_and_refuses_to_overwrite(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthesize_job", Path(__file__).parents[1] / "jobs/synthesize.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    argv = ["--output", str(tmp_path), "--splits", "3,1,1", "--seed", "2", "--sizes", "64x48",
            "--fps", "10", "--min-duration", "2", "--max-duration", "2.5", "--qa-per-video", "6"]
    assert job.main(argv) == 0
    assert "videos: 5 (train 3, val 1, test 1)" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "txt/qa_train.jsonl")) == 18
    assert job.main(argv) == 2
    assert job.main(["--output", str(tmp_path / "x"), "--videos", "4", "--splits", "3,1,1"]) == 2
