"""Tests of the video index: index choice, reading embeddings, clip aggregation, build/load/search, sharded build."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipbert import embeddings as ve
from clipbert import index as vi
from clipbert.embeddings import EMBED_SCHEMA as EMB_SCHEMA

logger = logging.getLogger(__name__)

DIM = 16
GIB = 2**30


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; float32, same shape."""
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_videos(n_videos: int, seed: int, dim: int = DIM) -> dict[str, np.ndarray]:
    """video id -> its clip embeddings (2..4 clips, E=dim), each video's clips around its own direction."""
    rng = np.random.default_rng(seed)
    centres = _normalise(rng.standard_normal((n_videos, dim)))  # (V, E)
    return {f"vid{v:04d}": _normalise(centres[v] + 0.4 * rng.standard_normal((int(rng.integers(2, 5)), dim)))
            for v in range(n_videos)}


def write_emb(root: Path, videos: dict[str, np.ndarray], failed: tuple[str, ...] = (), shards: int = 2) -> Path:
    """An embeddings directory in the embed job's schema: videos spread over `shards` shards, plus failed rows."""
    rows = [{"video_id": vid, "status": "ok", "error": "", "n_clips": len(clips),
             "clip_embeddings": clips.tolist(), "video_embedding": _normalise(clips.mean(0)).tolist()}
            for vid, clips in videos.items()]
    rows += [{"video_id": vid, "status": "failed", "error": "decode error", "n_clips": 0,
              "clip_embeddings": [], "video_embedding": []} for vid in failed]
    order = np.random.default_rng(0).permutation(len(rows))  # shards in no particular id order
    (root / ve.SHARDS_DIR).mkdir(parents=True)
    for s in range(shards):
        part = [rows[i] for i in order[s::shards]]
        pq.write_table(pa.Table.from_pylist(part, schema=EMB_SCHEMA), root / ve.SHARDS_DIR / f"part-{s:03d}.parquet")
    return root


@pytest.fixture(scope="module")
def videos() -> dict[str, np.ndarray]:
    return synthetic_videos(40, seed=1)


@pytest.fixture(scope="module")
def emb(tmp_path_factory, videos) -> Path:
    """40 ok videos and one failed row in 3 shards."""
    return write_emb(tmp_path_factory.mktemp("emb"), videos, failed=("broken",), shards=3)


@pytest.fixture(scope="module")
def video_index(tmp_path_factory, emb) -> Path:
    """A video-granularity index directory over `emb`."""
    out = tmp_path_factory.mktemp("index_video")
    vi.VideoIndex.build(emb, out, granularity="video", memory_budget="1G", provenance={"checkpoint": "ck", "N": 4})
    return out


# ------------------------------------------------------------------------------------------- choice

@pytest.mark.parametrize("n, dim, budget, expected", [
    (5_000, 256, GIB, "Flat"),
    (1_000_000, 256, 2 * GIB, "HNSW32"),
    (1_000_000, 256, 1_050_000_000, "IVF4096,Flat"),  # HNSW8 needs 1.088e9; the raw vectors 1.024e9
    (1_000_000, 256, 500_000_000, "OPQ128_256,IVF4096,PQ128"),
    (1_000_000, 256, 64_000_000, "OPQ48_240,IVF4096,PQ48"),  # PQ64 needs 76.8e6
    (20_000_000, 256, 50 * GIB, "IVF16384,Flat"),  # too many vectors for HNSW
])
def test_choose_index(n, dim, budget, expected):
    assert vi.choose_index(n, dim, budget) == expected
    assert vi.estimate_memory(expected, n, dim) <= budget


def test_choose_index_fits_nothing_names_numbers():
    with pytest.raises(ValueError, match=r"1,000,000 vectors x 256 dims fits in 1,000,000 bytes.*PQ4.*needs"):
        vi.choose_index(1_000_000, 256, 1_000_000)


def test_every_choice_respects_the_budget():
    for n in (100, 20_000, 300_000, 5_000_000):
        for budget in (2**k for k in range(20, 36, 3)):
            try:
                factory = vi.choose_index(n, 128, budget)
            except ValueError:
                continue
            assert vi.estimate_memory(factory, n, 128) <= budget, (n, budget, factory)


@pytest.mark.parametrize("text, expected", [("4G", 4 * GIB), ("512M", 512 * 2**20), ("1.5K", 1536), ("123", 123),
                                            ("2g", 2 * GIB), ("1T", 2**40), ("3GiB", 3 * GIB), (77, 77)])
def test_parse_memory(text, expected):
    assert vi.parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["", "G", "4X", "four", "-1G", "1..5G"])
def test_parse_memory_rejects(bad):
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        vi.parse_memory(bad)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF1024,Flat", "OPQ32_256,IVF1024,PQ32", "IVF256,PQ16x4"])
def test_estimate_memory_grows_with_vectors(factory):
    sizes = [vi.estimate_memory(factory, n, 256) for n in (10_000, 100_000, 1_000_000, 10_000_000)]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_estimate_memory_orders_types():
    n, d = 1_000_000, 256
    est = {f: vi.estimate_memory(f, n, d) for f in ("Flat", "HNSW8", "HNSW32", "IVF4096,Flat",
                                                    "OPQ64_256,IVF4096,PQ64", "OPQ8_256,IVF4096,PQ8")}
    assert est["Flat"] == 4 * d * n
    assert est["HNSW32"] == (4 * d + 8 * 32) * n
    assert est["OPQ8_256,IVF4096,PQ8"] < est["OPQ64_256,IVF4096,PQ64"] < est["Flat"] < est["IVF4096,Flat"]
    assert est["IVF4096,Flat"] < est["HNSW8"] < est["HNSW32"]


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


# ------------------------------------------------------------------------------------------ reading

def test_load_embeddings_video_and_clips(emb, videos):
    vectors, ids = ve.load_embeddings(emb, "video")
    names = sorted(videos)
    assert ids.column_names == ["video_id", "clip"] and ids["video_id"].to_pylist() == names  # "broken" skipped
    assert set(ids["clip"].to_pylist()) == {-1} and vectors.shape == (40, DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[3], _normalise(videos[names[3]].mean(0)), atol=1e-6)

    clip_vectors, clip_ids = ve.load_embeddings(emb, "clips")
    expected = [(v, c) for v in names for c in range(len(videos[v]))]
    assert list(zip(clip_ids["video_id"].to_pylist(), clip_ids["clip"].to_pylist())) == expected
    np.testing.assert_allclose(clip_vectors, np.concatenate([videos[v] for v in names]), atol=1e-6)


def test_load_embeddings_restriction_warns(emb, caplog):
    with caplog.at_level(logging.WARNING, logger="clipbert.embeddings"):
        _, ids = ve.load_embeddings(emb, "clips", video_ids=["vid0003", "vid0001", "broken", "nope"])
    assert sorted(set(ids["video_id"].to_pylist())) == ["vid0001", "vid0003"]
    assert "2 of the 4 requested video ids" in caplog.text


def test_load_embeddings_errors_name_the_directory(tmp_path, videos):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ve.load_embeddings(tmp_path, "video")
    failed_only = write_emb(tmp_path / "failed", {}, failed=("a", "b"), shards=1)
    with pytest.raises(ValueError, match=f"no ok embeddings in {failed_only}"):
        ve.load_embeddings(failed_only, "video")


# ----------------------------------------------------------------------------------- build and search

def test_build_load_round_trip(video_index, emb, videos):
    loaded = vi.VideoIndex.load(video_index)
    assert loaded.video_ids == sorted(videos)
    assert pq.read_table(video_index / vi.IDS_FILE).equals(ve.load_embeddings(emb, "video")[1])
    info = loaded.info
    assert info["provenance"] == {"checkpoint": "ck", "N": 4} and info["factory"] == "Flat" and info["factory_auto"]
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
    queries = _normalise(np.random.default_rng(5).standard_normal((6, DIM)))
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


def test_tune_search_reaches_target_on_ivf():
    rng = np.random.default_rng(0)
    centres = _normalise(rng.standard_normal((50, 32)))
    vectors = _normalise(centres[rng.integers(0, 50, 4000)] + 0.3 * rng.standard_normal((4000, 32)))
    queries = vi.make_queries(vectors[rng.choice(4000, 200, replace=False)], seed=1, noise=0.3)
    index = vi.build_index(vectors, "IVF64,Flat", seed=0)
    tuned = vi.tune_search(index, vectors, queries, k=10, target_recall=0.9)
    assert tuned["parameter"] == "nprobe" and tuned["recall"] >= 0.9
    assert vi.recall_at_k(index, vectors, queries, 10) == pytest.approx(tuned["recall"])
    assert 1 < tuned["value"] <= 64
    faiss.extract_index_ivf(index).nprobe = tuned["value"] - 1
    assert vi.recall_at_k(index, vectors, queries, 10) < 0.9  # the smallest value that reaches it
    assert vi.tune_search(vi.build_index(vectors, "Flat"), vectors, queries)["recall"] == 1.0


def test_load_refuses_mismatched_ids(tmp_path, video_index):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in (vi.INDEX_FILE, vi.INFO_FILE):
        (broken / name).write_bytes((video_index / name).read_bytes())
    pq.write_table(pq.read_table(video_index / vi.IDS_FILE).slice(0, 39), broken / vi.IDS_FILE)
    with pytest.raises(ValueError, match=r"39 rows.* 40 vectors"):
        vi.VideoIndex.load(broken)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_index_file_is_named(tmp_path, video_index, damage):
    for name in (vi.IDS_FILE, vi.INFO_FILE, vi.INDEX_FILE):
        (tmp_path / name).write_bytes((video_index / name).read_bytes())
    data = (tmp_path / vi.INDEX_FILE).read_bytes()
    (tmp_path / vi.INDEX_FILE).write_bytes(data[: len(data) // 2] if damage == "truncate" else b"garbage!" * 64)
    with pytest.raises(ValueError, match=str(tmp_path / vi.INDEX_FILE)):
        vi.VideoIndex.load(tmp_path)


def test_missing_directory_and_file_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        vi.VideoIndex.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / vi.INFO_FILE)):
        vi.VideoIndex.load(tmp_path)


def test_k_is_clamped_once(video_index, caplog):
    index = vi.VideoIndex.load(video_index)
    queries = _normalise(np.random.default_rng(3).standard_normal((2, DIM)))
    with caplog.at_level(logging.WARNING, logger="clipbert.index"):
        found, scores = index.search(queries, k=100)
        index.search(queries, k=500)
    assert scores.shape == (2, 40) and all(len(row) == 40 and len(set(row)) == 40 for row in found)
    assert caplog.text.count("exceeds the 40 videos") == 1


# ------------------------------------------------------------------------------------------ sharded

def test_sharded_build_equals_single_process(tmp_path, ray_local):
    from pipelines.index import build_sharded, sharded_add

    emb = write_emb(tmp_path / "emb", synthetic_videos(700, seed=2), failed=("bad",), shards=3)
    factory = "OPQ4,IVF8,PQ4x4"
    sharded, ids = build_sharded(emb, factory, num_tasks=2, seed=3)
    vectors, single_ids = ve.load_embeddings(emb, "video")
    single = vi.build_index(vectors, factory, seed=3)
    assert ids.equals(single_ids) and sharded.ntotal == single.ntotal == 700

    queries = vi.make_queries(vectors[:50], seed=4)
    for index in (sharded, single):
        faiss.extract_index_ivf(index).nprobe = 4
    d_sharded, i_sharded = sharded.search(queries, 10)
    d_single, i_single = single.search(queries, 10)
    np.testing.assert_allclose(d_sharded, d_single, rtol=1e-6)
    assert (i_sharded == i_single).mean() > 0.99  # only equal-score hits may swap

    built = vi.VideoIndex.build(emb, tmp_path / "index", granularity="video", memory_budget="1G", factory=factory,
                                seed=3, add_fn=sharded_add(2))
    assert built.info["sharded"] and built.index.ntotal == 700
    loaded = vi.VideoIndex.load(tmp_path / "index").index
    faiss.extract_index_ivf(loaded).nprobe = 4
    np.testing.assert_allclose(loaded.search(queries, 10)[0], d_single, rtol=1e-6)  # same seed: same index
