"""Exact search, recall against it, and tuning an index's search parameter (nprobe / efSearch) to a target recall.

Recall is measured on probe queries (``make_queries``: gallery samples plus noise) against exact inner-product
search; ``tune_search`` sets the smallest parameter value that reaches the target.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import faiss
import numpy as np

from clipbert.retrieval.embeddings import Gallery

logger = logging.getLogger(__name__)

RECALL_K = 10
HNSW_MAX_EF_SEARCH = 4096


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: scores float32 (Q, k) descending, rows int64 (Q, k)."""
    k = min(k, len(vectors))
    return faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(vectors, np.float32), k,
                     metric=faiss.METRIC_INNER_PRODUCT)


def exact_search_gallery(gallery: Gallery, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """exact_search over a gallery read one shard at a time; rows are gallery rows. (Q, k) each."""
    scores, rows = [], []
    for shard in range(len(gallery.shards)):
        positions = gallery.shard_positions(shard)
        if len(positions):
            s, r = exact_search(gallery.vectors(positions), queries, k)
            scores.append(s)
            rows.append(np.where(r >= 0, positions[np.maximum(r, 0)], -1))
    return merge_topk(scores, rows, k)


def merge_topk(scores: Sequence[np.ndarray], rows: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k of several (Q, k_i) top-k lists of inner products: scores (Q, k), rows (Q, k)."""
    all_scores = np.concatenate(scores, axis=1)  # (Q, sum k_i)
    all_rows = np.concatenate(rows, axis=1)
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_rows, order, 1)


def recall_of(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each truth row (Q, k) present in the matching found row (Q, k'); -1 never matches."""
    hits = (found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)  # (Q, k', k)
    return float(hits.any(axis=1).sum() / max(truth.size, 1))


def search_parameter(index: faiss.Index) -> tuple[str | None, int, int]:
    """(name, smallest, largest) of the index's speed/recall knob: nprobe (IVF), efSearch (HNSW) or None."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "nprobe", 1, int(ivf.nlist)
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return "efSearch", 16, HNSW_MAX_EF_SEARCH
    return None, 0, 0


def set_search_parameter(index: faiss.Index, name: str | None, value: int | None) -> None:
    """Apply a search parameter (no-op for None)."""
    if name is not None:
        faiss.ParameterSpace().set_index_parameter(index, name, int(value))


def tune_search(index: faiss.Index, vectors: np.ndarray | None, queries: np.ndarray, k: int = RECALL_K,
                target_recall: float = 0.95, truth: np.ndarray | None = None) -> dict[str, Any]:
    """Set the smallest nprobe / efSearch whose recall@k on `queries` reaches `target_recall`.

    Args:
        vectors: float32 (n, E), the indexed vectors (for exact search); may be None when `truth` is given.
        queries: float32 (Q, E).
        truth: int64 (Q, k) exact top-k rows, computed from `vectors` when None.
    Returns:
        {"parameter", "value", "recall", "k"}; the largest value (with a warning) when none reaches the
        target; {"parameter": None, "value": None, "recall": 1.0} for exact index types.
    """
    name, low, high = search_parameter(index)
    if name is None:
        return {"parameter": None, "value": None, "recall": 1.0, "k": k}
    queries = np.ascontiguousarray(queries, np.float32)
    truth = exact_search(vectors, queries, k)[1] if truth is None else truth

    def measure(value: int) -> float:
        set_search_parameter(index, name, value)
        return recall_of(index.search(queries, truth.shape[1])[1], truth)

    value, recall = _smallest_reaching(measure, low, high, target_recall)
    if recall < target_recall:
        logger.warning("recall@%d %.3f < target %.3f even at %s=%d", k, recall, target_recall, name, value)
    set_search_parameter(index, name, value)
    logger.info("search parameter %s=%d: recall@%d %.3f", name, value, k, recall)
    return {"parameter": name, "value": int(value), "recall": recall, "k": k}


def _smallest_reaching(measure: Callable[[int], float], low: int, high: int, target: float) -> tuple[int, float]:
    """Smallest integer v in [low, high] with measure(v) >= target (measure increasing in v), and measure(v).

    Doubles from `low` until the target is reached, then bisects; returns (high, measure(high)) if never.
    """
    seen: dict[int, float] = {}

    def at(v: int) -> float:
        if v not in seen:
            seen[v] = measure(v)
        return seen[v]

    good = low
    while at(good) < target and good < high:
        good = min(2 * good, high)
    if at(good) < target:
        return good, at(good)
    bad = max(low, good // 2) if good > low else low - 1  # largest value known (or assumed) to miss
    while good - bad > 1:
        mid = (good + bad) // 2
        if at(mid) >= target:
            good = mid
        else:
            bad = mid
    return good, at(good)


def make_queries(sample: np.ndarray, seed: int, noise: float = 0.1) -> np.ndarray:
    """Probe queries: sample vectors (Q, E) plus Gaussian noise of norm ~`noise`, renormalised; float32 (Q, E)."""
    rng = np.random.default_rng(seed)
    noisy = sample + rng.normal(0.0, noise / math.sqrt(sample.shape[1]), sample.shape)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
