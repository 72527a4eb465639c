"""Tests of clipbert/retrieval/index_build.py on small random vectors: indexes from factory strings (Flat, HNSW, IVF,
IVF-PQ) filled and searched, the seeded training sample, chunked adds, and training an empty index on a gallery."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest
from index_data import normalise, synthetic_videos, write_emb

from clipbert.retrieval import embeddings as ve
from clipbert.retrieval.index_build import (
    TRAIN_POINTS_PER_CENTROID,
    add_in_chunks,
    build_index,
    enable_reconstruct,
    gpu_available,
    new_index,
    sample_rows,
    train_empty_index,
    training_rows,
)
from clipbert.retrieval.index_choice import MIN_POINTS_PER_CENTROID

DIM = 16


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    """float32 (n, DIM) random unit vectors."""
    return normalise(np.random.default_rng(seed).standard_normal((n, DIM)))


def _brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the k largest inner products of each query; int64 (Q, k)."""
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def _centroids(index: faiss.Index) -> np.ndarray:
    """The IVF coarse centroids of an index; float32 (nlist, E)."""
    ivf = faiss.extract_index_ivf(index)
    return faiss.rev_swig_ptr(faiss.downcast_index(ivf.quantizer).get_xb(), ivf.nlist * ivf.d).reshape(ivf.nlist, -1)


# ------------------------------------------------------------------------------------------ new_index
@pytest.mark.parametrize("metric, faiss_metric", [("ip", faiss.METRIC_INNER_PRODUCT), ("l2", faiss.METRIC_L2)])
def test_new_index_is_empty_with_the_metric_asked(metric, faiss_metric):
    index = new_index("Flat", DIM, metric)
    assert (index.ntotal, index.d, index.metric_type, index.is_trained) == (0, DIM, faiss_metric, True)


def test_new_index_refuses_an_unknown_metric():
    with pytest.raises(ValueError, match=r"unknown metric 'cos'; expected one of ip, l2"):
        new_index("Flat", DIM, "cos")


def test_polysemous_training_is_off_for_ivf_pq():
    index = new_index("IVF4,PQ4", DIM)
    assert not index.is_trained
    assert faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training is False


# ------------------------------------------------------------------------------------------ training sample
def test_sample_rows_are_distinct_sorted_and_seeded():
    rows = sample_rows(1000, 50, seed=3)
    assert rows.shape == (50,) and len(set(rows.tolist())) == 50 and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, sample_rows(1000, 50, seed=3))
    assert not np.array_equal(rows, sample_rows(1000, 50, seed=4))
    assert sample_rows(7, 7, seed=0).tolist() == sample_rows(7, 100, seed=0).tolist() == list(range(7))


@pytest.mark.parametrize("factory, n, train_size, expected", [
    ("Flat", 500, None, 500),  # no k-means: at most 10,000 rows
    ("IVF8,Flat", 20_000, None, 10_000),  # 64 per centroid is fewer than 10,000
    ("IVF256,Flat", 20_000, None, TRAIN_POINTS_PER_CENTROID * 256),
    ("IVF4,PQ4x4", 20_000, None, 10_000),  # the PQ codebook's 16 entries
    ("IVF8,Flat", 2_000, 300, 300),
    ("IVF8,Flat", 200, 300, 200),
])
def test_training_rows_size(factory, n, train_size, expected):
    rows = training_rows(new_index(factory, DIM), n, train_size, seed=1)
    assert rows.tolist() == sample_rows(n, expected, seed=1).tolist()


def test_training_rows_warns_when_centroids_get_few_points(caplog):
    with caplog.at_level(logging.WARNING, logger="clipbert.retrieval.index_build"):
        training_rows(new_index("IVF64,Flat", DIM), 100)
    assert f"training on 100 points for 64 centroids (at least {MIN_POINTS_PER_CENTROID * 64} recommended)" \
        in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipbert.retrieval.index_build"):
        training_rows(new_index("IVF2,Flat", DIM), 100)
    assert caplog.text == ""


# ------------------------------------------------------------------------------------------ build_index
@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_build_index_finds_the_exact_neighbours(factory):
    vectors = _vectors(400)
    index = build_index(vectors, factory, use_gpu=False)
    assert index.ntotal == 400 and index.is_trained
    if "IVF" in factory:
        faiss.extract_index_ivf(index).nprobe = 4  # every list: exact
    queries = _vectors(10, seed=1)
    found = index.search(queries, 5)[1]
    np.testing.assert_array_equal(found, _brute_force(vectors, queries, 5))


@pytest.mark.parametrize("factory, k", [("HNSW32", 1), ("IVF4,Flat", 1), ("IVF4,PQ8x4", 5)])
def test_build_index_finds_each_vector_itself(factory, k):
    vectors = _vectors(400)
    index = build_index(vectors, factory)
    assert index.ntotal == 400
    found = index.search(vectors[:50], k)[1]  # ids are the row numbers
    assert all(row in hits for row, hits in enumerate(found.tolist()))  # PQ codes are lossy: among the first k


def test_build_index_with_l2_metric():
    vectors = _vectors(100)
    index = build_index(vectors, "Flat", metric="l2")
    distances, found = index.search(vectors[:3], 1)
    assert index.metric_type == faiss.METRIC_L2 and found[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-5)


def test_build_index_trains_on_the_seeded_sample():
    vectors = _vectors(2000)
    first, again = (build_index(vectors, "IVF8,Flat", train_size=400, seed=5) for _ in range(2))
    np.testing.assert_array_equal(_centroids(first), _centroids(again))
    sample = new_index("IVF8,Flat", DIM)
    sample.train(vectors[sample_rows(2000, 400, seed=5)])
    np.testing.assert_array_equal(_centroids(first), _centroids(sample))  # trained on exactly those rows


def test_use_gpu_without_a_gpu_is_refused():
    if gpu_available():
        pytest.skip("this faiss sees a GPU")
    with pytest.raises(RuntimeError, match="use_gpu=True but this faiss has no GPU support or sees no GPU"):
        build_index(_vectors(10), "Flat", use_gpu=True)


# ------------------------------------------------------------------------------------------ adds, reconstruct
def test_add_in_chunks_adds_every_vector_with_its_id():
    vectors = _vectors(10)
    plain = new_index("Flat", DIM)
    add_in_chunks(plain, vectors, chunk=3)
    assert plain.ntotal == 10 and plain.search(vectors[[7]], 1)[1].tolist() == [[7]]
    mapped = new_index("IDMap,Flat", DIM)
    add_in_chunks(mapped, vectors, np.arange(100, 110), chunk=4)
    assert mapped.ntotal == 10 and mapped.search(vectors[[7, 9]], 1)[1].tolist() == [[107], [109]]


def test_enable_reconstruct_gives_ivf_vectors_back():
    vectors = _vectors(400)
    index = build_index(vectors, "IVF4,Flat")
    with pytest.raises(RuntimeError):
        index.reconstruct(5)
    enable_reconstruct(index)
    np.testing.assert_allclose(index.reconstruct(5), vectors[5])
    flat = build_index(vectors, "Flat")
    enable_reconstruct(flat)  # nothing to do
    np.testing.assert_allclose(flat.reconstruct(5), vectors[5])


# ------------------------------------------------------------------------------------------ train_empty_index
def test_train_empty_index_trains_as_build_index_would(tmp_path):
    emb = write_emb(tmp_path / "emb", synthetic_videos(300, seed=2), shards=2)
    gallery = ve.open_gallery(emb, "video")
    empty = train_empty_index(gallery, "IVF4,Flat", train_size=100, seed=3)
    assert (empty.ntotal, empty.d, empty.is_trained) == (0, gallery.dim, True)
    built = build_index(gallery.vectors(), "IVF4,Flat", train_size=100, seed=3)
    np.testing.assert_array_equal(_centroids(empty), _centroids(built))
