"""Tests of clipbert/retrieval/embeddings.py: the header and shards of an embeddings directory written and read
back, what a resumed run reads as done, the gallery of ok vectors, and errors that name the file or directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from index_data import DIM, normalise, standard_emb, standard_videos, write_emb

from clipbert.retrieval import embeddings as ve


VIDEOS = standard_videos()  # video id -> its clip embeddings (n_clips, DIM)


@pytest.fixture(scope="module")
def emb(tmp_path_factory) -> Path:
    """The VIDEOS and one failed row ("broken") in 3 shards."""
    return standard_emb(tmp_path_factory.mktemp("emb"))


def _write_shard(root: Path, name: str, rows: list[dict]) -> Path:
    """One shard of EMBED_SCHEMA rows under root/shards; its path."""
    path = root / ve.SHARDS_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ve.EMBED_SCHEMA), path)
    return path


def _ok(video_id: str, clips: list[list[float]], n_clips: int | None = None) -> dict:
    """An ok EMBED_SCHEMA row of `clips` (N, E) (n_clips: N unless given), its video vector their mean."""
    mean = np.mean(clips, 0).tolist() if clips else []
    return {"video_id": video_id, "status": "ok", "error": "", "n_clips": len(clips) if n_clips is None else n_clips,
            "clip_embeddings": clips, "video_embedding": mean}


# ------------------------------------------------------------------------------------------ header and shards
def test_header_round_trip(tmp_path):
    header = {"checkpoint": "/ckpt", "checkpoint_hash": "ab12", "frame_store": "/frames", "n_clips": 4,
              "num_frames": 2, "embed_dim": DIM}
    (tmp_path / ve.HEADER_FILE).write_text(json.dumps(header, indent=2))
    assert ve.read_header(tmp_path) == header


def test_a_directory_without_header_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^not an embeddings directory \(no embed.json\): {tmp_path}$"):
        ve.read_header(tmp_path)


def test_rows_round_trip_through_the_shards(emb):
    rows = {r["video_id"]: r for r in ve.read_rows(emb).to_pylist()}
    assert sorted(rows) == sorted([*VIDEOS, "broken"]) and ve.read_rows(emb).schema == ve.EMBED_SCHEMA
    assert [p.name for p in ve.shard_paths(emb)] == ["part-000.parquet", "part-001.parquet", "part-002.parquet"]
    ok, failed = rows["vid0007"], rows["broken"]
    assert (ok["status"], ok["error"], ok["n_clips"]) == ("ok", "", len(VIDEOS["vid0007"]))
    np.testing.assert_allclose(ok["clip_embeddings"], VIDEOS["vid0007"], atol=1e-6)
    np.testing.assert_allclose(ok["video_embedding"], normalise(VIDEOS["vid0007"].mean(0)), atol=1e-6)
    assert (failed["status"], failed["error"], failed["n_clips"]) == ("failed", "decode error", 0)
    assert ve.read_rows(emb, ["video_id", "status"]).column_names == ["video_id", "status"]


# ------------------------------------------------------------------------------------------ resume bookkeeping
def test_a_new_directory_has_no_shards_and_no_rows(tmp_path):
    assert ve.shard_paths(tmp_path) == []
    assert ve.read_rows(tmp_path).num_rows == 0 and ve.read_rows(tmp_path).schema == ve.EMBED_SCHEMA
    assert ve.read_rows(tmp_path, ["video_id"]).column_names == ["video_id"]


def test_only_finished_shards_count_sorted_by_name(tmp_path):
    _write_shard(tmp_path, "r001-00000.parquet", [_ok("b", [[1.0, 0.0]])])
    _write_shard(tmp_path, "r000-00003.parquet", [_ok("a", [[0.0, 1.0]])])
    (tmp_path / ve.SHARDS_DIR / ".r001-00001.parquet.tmp").write_bytes(b"half a shard")  # being written
    (tmp_path / ve.SHARDS_DIR / "notes.txt").write_text("")
    assert [p.name for p in ve.shard_paths(tmp_path)] == ["r000-00003.parquet", "r001-00000.parquet"]
    assert ve.read_rows(tmp_path, ["video_id"]).column("video_id").to_pylist() == ["a", "b"]  # the videos done


# ------------------------------------------------------------------------------------------ gallery
def test_gallery_indexes_ok_rows_and_reads_vectors_on_demand(emb):
    gallery = ve.open_gallery(emb, "video")
    names = sorted(VIDEOS)
    assert (gallery.size, gallery.dim, gallery.granularity, gallery.emb_dir) == (40, DIM, "video", emb)
    assert gallery.ids()["video_id"].to_pylist() == names and set(gallery.ids()["clip"].to_pylist()) == {-1}
    positions = np.concatenate([gallery.shard_positions(s) for s in range(len(gallery.shards))])
    assert sorted(positions.tolist()) == list(range(40))  # every row in exactly one shard
    picked = np.array([39, 0, 17, 5])  # across shards, in no order
    expected = np.stack([normalise(VIDEOS[names[i]].mean(0)) for i in picked])
    np.testing.assert_allclose(gallery.vectors(picked), expected, atol=1e-6)


def test_clip_gallery_has_one_row_per_clip(emb):
    gallery = ve.open_gallery(emb, "clips", video_ids=["vid0002", "vid0001"])
    clips = [len(VIDEOS["vid0001"]), len(VIDEOS["vid0002"])]
    assert gallery.size == sum(clips)
    assert gallery.ids()["clip"].to_pylist() == [*range(clips[0]), *range(clips[1])]
    np.testing.assert_allclose(gallery.vectors(), np.concatenate([VIDEOS["vid0001"], VIDEOS["vid0002"]]), atol=1e-6)


def test_load_embeddings_video_and_clips(emb):
    vectors, ids = ve.load_embeddings(emb, "video")
    names = sorted(VIDEOS)
    assert ids.column_names == ["video_id", "clip"] and ids["video_id"].to_pylist() == names  # "broken" skipped
    assert set(ids["clip"].to_pylist()) == {-1} and vectors.shape == (40, DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[3], normalise(VIDEOS[names[3]].mean(0)), atol=1e-6)

    clip_vectors, clip_ids = ve.load_embeddings(emb, "clips")
    expected = [(v, c) for v in names for c in range(len(VIDEOS[v]))]
    assert list(zip(clip_ids["video_id"].to_pylist(), clip_ids["clip"].to_pylist())) == expected
    np.testing.assert_allclose(clip_vectors, np.concatenate([VIDEOS[v] for v in names]), atol=1e-6)


def test_load_embeddings_restriction_warns(emb, caplog):
    with caplog.at_level(logging.WARNING, logger="clipbert.retrieval.embeddings"):
        _, ids = ve.load_embeddings(emb, "clips", video_ids=["vid0003", "vid0001", "broken", "nope"])
    assert sorted(set(ids["video_id"].to_pylist())) == ["vid0001", "vid0003"]
    assert "2 of the 4 requested video ids" in caplog.text


def test_load_embeddings_errors_name_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ve.load_embeddings(tmp_path, "video")
    failed_only = write_emb(tmp_path / "failed", {}, failed=("a", "b"), shards=1)
    with pytest.raises(ValueError, match=f"no ok embeddings in {failed_only}"):
        ve.load_embeddings(failed_only, "video")


# ------------------------------------------------------------------------------------------ errors
def test_a_directory_without_shards_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"no embedding shards \(\*.parquet\) under {tmp_path / 'shards'}"):
        ve.list_shards(tmp_path)


def test_an_unknown_granularity_is_refused(emb):
    with pytest.raises(ValueError, match=r"unknown granularity 'frames'; expected one of video, clips"):
        ve.open_gallery(emb, "frames")


def test_a_shard_that_is_not_parquet_is_named(tmp_path):
    _write_shard(tmp_path, "r000-00000.parquet", [_ok("a", [[1.0, 0.0]])])
    bad = tmp_path / ve.SHARDS_DIR / "r000-00001.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=rf"^cannot read embedding shard {bad}: "):
        ve.open_gallery(tmp_path, "video")


def test_vectors_of_different_sizes_name_the_shard(tmp_path):
    path = _write_shard(tmp_path, "r000-00000.parquet", [_ok("a", [[1.0, 0.0]]), _ok("b", [[1.0, 0.0, 0.0]])])
    gallery = ve.open_gallery(tmp_path, "video")
    with pytest.raises(ValueError, match=rf"^{path}: embeddings of different sizes \[2, 3\]$"):
        gallery.vectors()


def test_n_clips_disagreeing_with_the_stored_clips_names_the_shard(tmp_path):
    path = _write_shard(tmp_path, "r000-00000.parquet", [_ok("a", [[1.0, 0.0]], n_clips=2)])
    gallery = ve.open_gallery(tmp_path, "clips")
    assert gallery.size == 2
    with pytest.raises(ValueError, match=rf"^{path}: n_clips or status disagree with the stored clip_embeddings$"):
        gallery.vectors()


def test_a_video_with_two_ok_rows_is_named(tmp_path):
    _write_shard(tmp_path, "r000-00000.parquet", [_ok("a", [[1.0, 0.0]]), _ok("b", [[0.0, 1.0]])])
    _write_shard(tmp_path, "r001-00000.parquet", [_ok("b", [[0.0, 1.0]])])
    with pytest.raises(ValueError, match=rf"^{tmp_path}: video b has 2 ok rows$"):
        ve.open_gallery(tmp_path, "video")


def test_ok_videos_without_clips_are_refused_at_clip_granularity(tmp_path):
    _write_shard(tmp_path, "r000-00000.parquet", [_ok("a", [])])
    with pytest.raises(ValueError, match=rf"^the ok videos of {tmp_path} have no clips$"):
        ve.open_gallery(tmp_path, "clips")


def test_a_restriction_to_unknown_videos_leaves_nothing(emb, caplog):
    with caplog.at_level(logging.WARNING, logger="clipbert.retrieval.embeddings"), \
            pytest.raises(ValueError, match=rf"^no ok embeddings in {emb} among the requested video ids$"):
        ve.open_gallery(emb, "video", video_ids=["nope"])
    assert "1 of the 1 requested video ids have no ok embedding" in caplog.text


# ------------------------------------------------------------------------------------------ helpers
def test_concat_ranges():
    got = ve.concat_ranges(np.array([5, 9, 0]), np.array([2, 0, 3]))
    assert got.tolist() == [5, 6, 0, 1, 2] and got.dtype == np.int64
    assert ve.concat_ranges(np.array([], np.int64), np.array([], np.int64)).tolist() == []
