"""Tests of reading an index directory: disagreeing, corrupt and missing files are refused by name."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from index_data import build_video_index, standard_emb

from clipbert.retrieval.index import VideoIndex
from clipbert.retrieval.index_files import IDS_FILE, INDEX_FILE, INFO_FILE


@pytest.fixture(scope="module")
def video_index(tmp_path_factory) -> Path:
    """A video-granularity index directory over the 40 standard videos."""
    return build_video_index(standard_emb(tmp_path_factory.mktemp("emb")), tmp_path_factory.mktemp("index_video"))


def test_load_refuses_mismatched_ids(tmp_path, video_index):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in (INDEX_FILE, INFO_FILE):
        (broken / name).write_bytes((video_index / name).read_bytes())
    pq.write_table(pq.read_table(video_index / IDS_FILE).slice(0, 39), broken / IDS_FILE)
    with pytest.raises(ValueError, match=r"39 rows.* 40 vectors"):
        VideoIndex.load(broken)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_index_file_is_named(tmp_path, video_index, damage):
    for name in (IDS_FILE, INFO_FILE, INDEX_FILE):
        (tmp_path / name).write_bytes((video_index / name).read_bytes())
    data = (tmp_path / INDEX_FILE).read_bytes()
    (tmp_path / INDEX_FILE).write_bytes(data[: len(data) // 2] if damage == "truncate" else b"garbage!" * 64)
    with pytest.raises(ValueError, match=str(tmp_path / INDEX_FILE)):
        VideoIndex.load(tmp_path)


def test_missing_directory_and_file_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        VideoIndex.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / INFO_FILE)):
        VideoIndex.load(tmp_path)


def test_index_json_names_local_files_relative_to_the_index_and_moves_with_them(tmp_path):
    """Local paths are written relative to the index directory and read back as paths, so a tree holding the index
    and what it was built from can move; URIs stay as they are."""
    import json
    import shutil

    tree = tmp_path / "tree"
    emb = standard_emb(tree / "emb")
    provenance = {"checkpoint": str(tree / "runs" / "best"), "frame_store": "s3://bucket/frames", "n_clips": 2}
    VideoIndex.build(emb, tree / "index", granularity="video", memory_budget="1G", provenance=provenance)
    on_disk = json.loads((tree / "index" / INFO_FILE).read_text())
    assert on_disk["embeddings"] == "../emb" and on_disk["provenance"]["checkpoint"] == "../runs/best"
    assert on_disk["provenance"]["frame_store"] == "s3://bucket/frames" and on_disk["provenance"]["n_clips"] == 2
    moved = tmp_path / "moved"
    shutil.move(tree, moved)
    info = VideoIndex.load(moved / "index").info
    assert info["embeddings"] == str(moved / "emb")
    assert info["provenance"]["checkpoint"] == str(moved / "runs" / "best")
    assert info["provenance"]["frame_store"] == "s3://bucket/frames"
