"""Tests of recall tuning: the smallest search parameter that reaches the target recall against exact search."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from index_data import normalise

from clipbert.retrieval.index_build import build_index
from clipbert.retrieval.index_tuning import exact_search, make_queries, recall_of, tune_search


def test_tune_search_reaches_target_on_ivf():
    rng = np.random.default_rng(0)
    centres = normalise(rng.standard_normal((50, 32)))
    vectors = normalise(centres[rng.integers(0, 50, 4000)] + 0.3 * rng.standard_normal((4000, 32)))
    queries = make_queries(vectors[rng.choice(4000, 200, replace=False)], seed=1, noise=0.3)
    truth = exact_search(vectors, queries, 10)[1]  # (Q, 10)
    index = build_index(vectors, "IVF64,Flat", seed=0)
    tuned = tune_search(index, vectors, queries, k=10, target_recall=0.9)
    assert tuned["parameter"] == "nprobe" and tuned["recall"] >= 0.9
    assert recall_of(index.search(queries, 10)[1], truth) == pytest.approx(tuned["recall"])
    assert 1 < tuned["value"] <= 64
    faiss.extract_index_ivf(index).nprobe = tuned["value"] - 1
    assert recall_of(index.search(queries, 10)[1], truth) < 0.9  # the smallest value that reaches it
    assert tune_search(build_index(vectors, "Flat"), vectors, queries)["recall"] == 1.0
