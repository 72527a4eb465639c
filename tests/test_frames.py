"""Tests of the frame-store format and reader (clipbert/data/frames.py)."""

import pickle

import numpy as np
import pyarrow as pa
import pytest

from clipbert.data import frames as fs


def _row(video_id, n, shard, status="ok"):
    return {"video_id": video_id, "source": f"/in/{video_id}.mp4", "status": status, "error": "",
            "num_frames": n, "fps": 4.0, "src_fps": 30.0, "duration_s": n / 4, "width": 64, "height": 48,
            "src_width": 64, "src_height": 48, "src_frames": n * 7, "bytes": 0, "shard": shard}


def _frames(n, seed):
    rng = np.random.default_rng(seed)
    gray = rng.integers(0, 255, size=(n, 3, 4, 1)).astype(np.uint8)
    return gray.repeat(16, axis=1).repeat(16, axis=2).repeat(3, axis=3)  # (n, 48, 64, 3) flat grey blocks


@pytest.fixture
def store(tmp_path):
    fs.write_header(tmp_path, fs.StoreOptions())
    videos = {"a": _frames(3, 0), "dir/b": _frames(5, 1)}
    rows = []
    for shard, (vid, frames) in zip(["s0", "s1"], videos.items()):
        writer = fs.ShardWriter(tmp_path / fs.SHARDS_DIR / shard)
        writer.put_video(vid, [fs.encode_jpeg(f, 95) for f in frames])
        rows.append(_row(vid, len(frames), shard))
        writer.finish(pa.Table.from_pylist(rows[-1:], schema=fs.MANIFEST_SCHEMA))
    rows.append(_row("broken", 0, "", status="failed"))
    fs.write_manifest(tmp_path, pa.Table.from_pylist(rows, schema=fs.MANIFEST_SCHEMA))
    return tmp_path, videos


def test_round_trip_values_and_metadata(store):
    root, videos = store
    reader = fs.FrameStore(root)
    assert reader.ids() == ["a", "dir/b"]  # failed rows are not readable videos
    assert "broken" not in reader and len(reader) == 2
    assert reader.n_stored("dir/b") == 5 and reader.stored_fps("a") == 4.0
    got = reader.get("dir/b", [4, 0, 0])
    assert got.shape == (3, 48, 64, 3) and got.dtype == np.uint8
    want = videos["dir/b"][[4, 0, 0]].astype(float)
    assert np.abs(got.astype(float) - want).mean() < 4.0  # JPEG q95 error on smooth blocks


def test_jpeg_bytes_are_stored_verbatim(store):
    root, videos = store
    reader = fs.FrameStore(root)
    assert reader.get_jpeg("a", [1]) == [fs.encode_jpeg(videos["a"][1], 95)]


@pytest.mark.parametrize("video_id, indices, error, match", [
    ("missing", [0], KeyError, "'missing' is not in frame store"),
    ("a", [3], IndexError, "has 3 frames; asked for \\[3\\]"),
    ("a", [-1], IndexError, "asked for \\[-1\\]"),
])
def test_bad_reads_name_the_problem(store, video_id, indices, error, match):
    with pytest.raises(error, match=match):
        fs.FrameStore(store[0]).get(video_id, indices)


def test_reader_pickles_without_open_handles(store):
    reader = fs.FrameStore(store[0])
    reader.get("a", [0])
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._index is None
    np.testing.assert_array_equal(clone.get("a", [0, 2]), reader.get("a", [0, 2]))


def test_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a frame store"):
        fs.FrameStore(tmp_path)


def test_reader_keeps_a_bounded_number_of_shards_open(store):
    reader = fs.FrameStore(store[0], max_open_shards=1)
    reader.get("a", [0])
    reader.get("dir/b", [0])
    assert [p.rsplit("/", 1)[1] for p in fs._SHARDS.envs] == ["s1"]
    np.testing.assert_array_equal(reader.get("a", [1]), fs.FrameStore(store[0]).get("a", [1]))


def test_incomplete_shards_are_removed(store, tmp_path):
    root, _ = store
    (root / fs.SHARDS_DIR / "s9").mkdir()  # a write task that died before writing its rows
    assert fs.remove_incomplete_shards(root) == ["s9"]
    assert [p.name for p in fs.shard_dirs(root)] == ["s0", "s1"]
    assert fs.read_shard_rows(root).column("video_id").to_pylist() == ["a", "dir/b"]


def test_decode_at_reduced_scale_keeps_min_side():
    frame = np.zeros((480, 640, 3), np.uint8)
    data = fs.encode_jpeg(frame, 90)
    assert fs.decode_jpeg(data).shape == (480, 640, 3)
    assert fs.decode_jpeg(data, min_side=150).shape == (120, 160, 3)  # 1/4 scale
    h, w, _ = fs.decode_jpeg(data, min_side=200).shape  # libjpeg's M/8 scales: the smallest with w >= 200
    assert 200 <= w < 320 and h * 4 == w * 3
    assert fs.decode_jpeg(data, min_side=1000).shape == (480, 640, 3)


def test_options_are_validated():
    with pytest.raises(ValueError, match="jpeg_quality"):
        fs.StoreOptions(jpeg_quality=0)
    with pytest.raises(ValueError, match="fps"):
        fs.StoreOptions(max_fps=0)


def test_header_keeps_its_fps_key(tmp_path):
    fs.write_header(tmp_path, fs.StoreOptions(max_fps=2.0, max_side=320))
    header = fs.read_header(tmp_path)
    assert (header["fps"], header["max_side"], header["jpeg_quality"]) == (2.0, 320, 90) and "max_fps" not in header
