"""Video search index: embedding shards -> a FAISS index chosen under a memory budget -> top-k videos per query.

The vectors come from an embeddings directory (clipbert/embeddings.py); every vector is L2-normalised, so
inner product is cosine.

Two granularities: ``video`` (one vector per video) and ``clips`` (one per clip; a query over-fetches clips,
then scores every candidate video over all of its clips and aggregates with max / mean / LogSumExp).
Rows are sorted by (video_id, clip): row i of ``ids.parquet`` is FAISS id i. An index directory holds
``index.faiss``, ``ids.parquet`` and ``index.json`` (written last: its presence marks a complete index).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipbert.embeddings import Gallery, check_choice, concat_ranges, open_gallery

logger = logging.getLogger(__name__)

AGGREGATIONS = ("max", "mean", "lse")
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
DEFAULT_LOGIT_SCALE = 1.0 / 0.07  # the contrastive temperature of the dual encoder, as a logit scale
INDEX_FILE, IDS_FILE, INFO_FILE = "index.faiss", "ids.parquet", "index.json"

FLAT_THRESHOLD = 10_000  # below this many vectors exact search is cheap enough
HNSW_MAX_VECTORS = 10_000_000  # HNSW graphs past this take too long to build
HNSW_MIN_M, HNSW_MAX_M = 8, 32  # links per node
MAX_NLIST = 65_536
PQ_SIZES = (256, 128, 64, 48, 32, 24, 16, 8, 4)  # bytes per PQ code, most accurate first
MIN_POINTS_PER_CENTROID = 39  # fewer training points per k-means centroid and faiss warns
TRAIN_POINTS_PER_CENTROID = 64
ADD_CHUNK = 65_536  # vectors per add call
HNSW_MAX_EF_SEARCH = 4096
RECALL_K = 10

AddFn = Callable[[faiss.Index, "Gallery"], faiss.Index]  # (trained empty index, gallery) -> filled index

_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_FLAT_RE = re.compile(r"^Flat$")
_HNSW_RE = re.compile(r"^HNSW(\d+)(?:,Flat)?$")
_IVF_RE = re.compile(r"^(?:OPQ(\d+)(?:_(\d+))?,)?IVF(\d+),(?:(Flat)|PQ(\d+)(?:x(\d+))?)$")
_GPU_RESOURCES: list[Any] = []  # one StandardGpuResources per process, created on first use


# ------------------------------------------------------------------------------------ choosing an index


def parse_memory(text: str | int) -> int:
    """Bytes of a memory size such as "4G", "512M", "1.5T", "123456" (K/M/G/T are powers of 1024).

    Returns:
        int bytes; ValueError naming the text when it is not a size.
    """
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"memory size {text!r} is negative")
        return int(text)
    match = _MEMORY_RE.match(str(text))
    if not match:
        raise ValueError(f"cannot parse memory size {text!r} (expected e.g. 4G, 512M, 1.5T or bytes)")
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).upper()])


@dataclasses.dataclass(frozen=True)
class IndexSpec:
    """The structure of a factory string, as far as the memory estimate needs it."""

    kind: str  # "flat" | "hnsw" | "ivf_flat" | "ivf_pq"
    hnsw_m: int = 0  # links per HNSW node
    nlist: int = 0  # IVF lists
    pq_m: int = 0  # PQ sub-quantizers
    pq_bits: int = 8  # bits per sub-quantizer code
    opq_dim: int = 0  # output dimension of the OPQ rotation; 0 without OPQ


def parse_factory(factory: str, dim: int) -> IndexSpec:
    """IndexSpec of Flat, HNSW{m}[,Flat], IVF{n},Flat and [OPQ{m}[_{D}],]IVF{n},PQ{m}[x{bits}]."""
    if _FLAT_RE.match(factory):
        return IndexSpec("flat")
    if match := _HNSW_RE.match(factory):
        return IndexSpec("hnsw", hnsw_m=int(match.group(1)))
    if match := _IVF_RE.match(factory):
        opq_m, opq_dim, nlist, flat, pq_m, bits = match.groups()
        if flat:
            return IndexSpec("ivf_flat", nlist=int(nlist))
        rotated = int(opq_dim) if opq_dim else (dim if opq_m else 0)
        return IndexSpec("ivf_pq", nlist=int(nlist), pq_m=int(pq_m), pq_bits=int(bits or 8), opq_dim=rotated)
    raise ValueError(f"no memory model for index factory {factory!r}")


def estimate_memory(factory: str, n_vectors: int, dim: int) -> int:
    """Approximate resident bytes of a filled index.

    Flat 4*d*n; HNSWm (4*d + 8*m)*n; IVF-Flat 4*d*n + 8*n (ids) + centroids; IVF-PQ code bytes + 8 (id) per
    vector + centroids + PQ codebooks + the OPQ matrix.
    """
    spec = parse_factory(factory, dim)
    if spec.kind == "flat":
        return 4 * dim * n_vectors
    if spec.kind == "hnsw":
        return (4 * dim + 8 * spec.hnsw_m) * n_vectors
    if spec.kind == "ivf_flat":
        return (4 * dim + 8) * n_vectors + 4 * dim * spec.nlist
    space = spec.opq_dim or dim  # dimension the IVF and PQ work in
    code_bytes = math.ceil(spec.pq_m * spec.pq_bits / 8)
    tables = 4 * space * spec.nlist + 4 * space * 2**spec.pq_bits + (4 * dim * space if spec.opq_dim else 0)
    return (code_bytes + 8) * n_vectors + tables


def ivf_lists(n_vectors: int) -> int:
    """IVF list count: about 4*sqrt(n) as a power of 2, at most n/39 (trainable) and MAX_NLIST."""
    target = 2 ** round(math.log2(4 * math.sqrt(max(n_vectors, 1))))
    trainable = 2 ** math.floor(math.log2(max(n_vectors // MIN_POINTS_PER_CENTROID, 1)))
    return int(max(1, min(target, trainable, MAX_NLIST)))


def index_candidates(n_vectors: int, dim: int, memory_budget_bytes: int) -> list[str]:
    """Factory strings worth building, best first (the first one within budget wins).

    Flat for small galleries; HNSW with as many links as the budget leaves per vector (8..32) below
    HNSW_MAX_VECTORS; IVF-Flat; then OPQ+IVF+PQ with the largest code that might fit.
    """
    out = ["Flat"] if n_vectors < FLAT_THRESHOLD else []
    links = math.floor((memory_budget_bytes / max(n_vectors, 1) - 4 * dim) / 8)
    if n_vectors < HNSW_MAX_VECTORS and links >= HNSW_MIN_M:
        out.append(f"HNSW{min(links, HNSW_MAX_M)}")
    nlist = ivf_lists(n_vectors)
    out.append(f"IVF{nlist},Flat")
    for m in (m for m in PQ_SIZES if m < dim):
        out.append(f"OPQ{m}_{(dim // m) * m},IVF{nlist},PQ{m}")
    return out


def choose_index(n_vectors: int, dim: int, memory_budget_bytes: int) -> str:
    """The best index factory string whose estimate_memory fits the budget.

    Returns:
        a faiss.index_factory string; ValueError with the numbers when not even the smallest fits.
    """
    if n_vectors <= 0 or dim <= 0:
        raise ValueError(f"cannot index {n_vectors} vectors of dimension {dim}")
    candidates = index_candidates(n_vectors, dim, memory_budget_bytes)
    for factory in candidates:
        if estimate_memory(factory, n_vectors, dim) <= memory_budget_bytes:
            return factory
    smallest = candidates[-1]
    raise ValueError(f"no index of {n_vectors:,} vectors x {dim} dims fits in {memory_budget_bytes:,} bytes: "
                     f"the smallest, {smallest}, needs {estimate_memory(smallest, n_vectors, dim):,} bytes")


# ------------------------------------------------------------------------------------------- building


def new_index(factory: str, dim: int, metric: str = "ip") -> faiss.Index:
    """An empty index from a factory string; metric "ip" (inner product: cosine on normalised vectors) or "l2"."""
    check_choice("metric", metric, tuple(METRICS))
    index = faiss.index_factory(dim, factory, METRICS[metric])
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and hasattr(faiss.downcast_index(ivf), "do_polysemous_training"):
        faiss.downcast_index(ivf).do_polysemous_training = False  # only for Hamming-filtered search, never used
    return index


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct rows of range(n) drawn with `seed`, ascending; all rows when size >= n. int64 (size,)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def training_rows(index: faiss.Index, n_vectors: int, train_size: int | None = None, seed: int = 0) -> np.ndarray:
    """Rows to train `index` on: TRAIN_POINTS_PER_CENTROID per k-means centroid unless `train_size` says.

    Warns when there are fewer than MIN_POINTS_PER_CENTROID points per centroid. Returns int64 (size,).
    """
    centroids = _largest_kmeans(index)
    size = min(n_vectors, train_size or max(TRAIN_POINTS_PER_CENTROID * centroids, 10_000))
    if size < MIN_POINTS_PER_CENTROID * centroids:
        logger.warning("training on %d points for %d centroids (at least %d recommended)",
                       size, centroids, MIN_POINTS_PER_CENTROID * centroids)
    return sample_rows(n_vectors, size, seed)


def _largest_kmeans(index: faiss.Index) -> int:
    """Most centroids one k-means of the index's training fits (IVF lists or PQ codebook entries); 0 if none."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return 0
    pq_ = getattr(faiss.downcast_index(ivf), "pq", None)
    return max(int(ivf.nlist), int(pq_.ksub) if pq_ is not None else 0)


def add_in_chunks(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray | None = None,
                  chunk: int = ADD_CHUNK) -> None:
    """Add float32 (n, E) vectors, with int64 (n,) ids when given, `chunk` at a time."""
    for start in range(0, len(vectors), chunk):
        part = np.ascontiguousarray(vectors[start:start + chunk], np.float32)
        if ids is None:
            index.add(part)
        else:
            index.add_with_ids(part, np.ascontiguousarray(ids[start:start + chunk], np.int64))


def build_index(vectors: np.ndarray, factory: str, *, metric: str = "ip", train_size: int | None = None,
                seed: int = 0, use_gpu: bool | None = None) -> faiss.Index:
    """Train (on a seeded sample, when the type needs it) and fill an index; ids are the row numbers.

    Args:
        vectors: float32 (n, E), L2-normalised for metric "ip".
        factory: a faiss.index_factory string.
        train_size: training points (default: see training_rows).
        use_gpu: build on a GPU (Flat and IVF types); None: when faiss has one.
    Returns:
        the filled index, on the CPU.
    """
    vectors = np.ascontiguousarray(vectors, np.float32)
    index = new_index(factory, vectors.shape[1], metric)
    work = _maybe_to_gpu(index, factory, use_gpu)
    if not index.is_trained:
        work.train(vectors[training_rows(index, len(vectors), train_size, seed)])
    add_in_chunks(work, vectors)
    return faiss.index_gpu_to_cpu(work) if work is not index else index


def gpu_available() -> bool:
    """Whether this faiss build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _maybe_to_gpu(index: faiss.Index, factory: str, use_gpu: bool | None) -> faiss.Index:
    """`index` cloned to GPU 0 when asked (or None and available) and the type supports it; else `index`."""
    if use_gpu is False or (use_gpu is None and not gpu_available()):
        return index
    if not gpu_available():
        raise RuntimeError("use_gpu=True but this faiss has no GPU support or sees no GPU")
    if "HNSW" in factory:
        logger.info("%s has no GPU form; building on the CPU", factory)
        return index
    if not _GPU_RESOURCES:
        _GPU_RESOURCES.append(faiss.StandardGpuResources())
    try:
        return faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], 0, index)
    except RuntimeError as error:
        logger.warning("cannot move %s to the GPU (%s); building on the CPU", factory, error)
        return index


def enable_reconstruct(index: faiss.Index) -> None:
    """Make `index.reconstruct` work: IVF types need a direct map (8 bytes per vector)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()


def train_empty_index(gallery: Gallery, factory: str, *, metric: str = "ip", train_size: int | None = None,
                      seed: int = 0) -> faiss.Index:
    """An empty index trained on the seeded gallery sample build_index would draw (reads only that sample)."""
    index = new_index(factory, gallery.dim, metric)
    if not index.is_trained:
        index.train(gallery.vectors(training_rows(index, gallery.size, train_size, seed)))
    return index


# ---------------------------------------------------------------------------------- recall and tuning


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


def recall_at_k(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = RECALL_K) -> float:
    """Recall@k of `index` against exact search over the same float32 (n, E) vectors, for (Q, E) queries."""
    truth = exact_search(vectors, queries, k)[1]
    return recall_of(index.search(np.ascontiguousarray(queries, np.float32), truth.shape[1])[1], truth)


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


# ---------------------------------------------------------------------------------- clip aggregation


def aggregate_clip_scores(sims: np.ndarray, video_of_clip: np.ndarray, how: str = "max",
                          scale: float = DEFAULT_LOGIT_SCALE) -> np.ndarray:
    """Per-video scores from per-clip similarities.

    Args:
        sims: (Q, C) query-clip similarities.
        video_of_clip: (C,) int video number 0..V-1 of each clip.
        how: "max", "mean" or "lse" (log(sum(exp(scale * s))) / scale over the video's clips).
        scale: logit scale of "lse".
    Returns:
        float32 (Q, V), V = video_of_clip.max() + 1; -inf for videos without clips.
    """
    check_choice("aggregation", how, AGGREGATIONS)
    sims = np.asarray(sims, np.float64)
    owner = np.asarray(video_of_clip, np.int64)
    n_videos = int(owner.max()) + 1 if owner.size else 0
    peak = np.full((n_videos, sims.shape[0]), -np.inf)  # (V, Q)
    np.maximum.at(peak, owner, sims.T)
    if how == "max":
        return peak.T.astype(np.float32)
    total = np.zeros_like(peak)  # (V, Q)
    with np.errstate(divide="ignore", invalid="ignore"):
        if how == "mean":
            np.add.at(total, owner, sims.T)
            counts = np.bincount(owner, minlength=n_videos)[:, None]  # (V, 1)
            out = np.where(counts > 0, total / np.maximum(counts, 1), -np.inf)
        else:
            np.add.at(total, owner, np.exp(scale * (sims.T - peak[owner])))
            out = peak + np.log(total) / scale
    return out.T.astype(np.float32)


def search_clips(index: faiss.Index, queries: np.ndarray, k: int, clip_video: np.ndarray, video_start: np.ndarray,
                 video_count: np.ndarray, how: str = "max",
                 scale: float = DEFAULT_LOGIT_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Top-k videos of a clip-granularity index: over-fetch clips, rescore candidate videos over all their clips.

    Args:
        index: one vector per clip, reconstructable (see enable_reconstruct).
        queries: float32 (Q, E).
        clip_video: (N,) video number of each index row; video v owns rows
            video_start[v] .. video_start[v] + video_count[v] - 1 (both (V,)).
    Returns:
        videos int64 (Q, k) (-1 past the candidates found), scores float32 (Q, k) (-inf there).
    """
    fetch = min(index.ntotal, k * int(video_count.max()) * 4)
    _, hits = index.search(queries, fetch)  # (Q, fetch) clip rows
    videos = np.full((len(queries), k), -1, np.int64)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    for q, query in enumerate(queries):
        candidates = np.unique(clip_video[hits[q][hits[q] >= 0]])  # (V_q,) ascending
        counts = video_count[candidates]
        clip_vectors = index.reconstruct_batch(concat_ranges(video_start[candidates], counts))  # (sum counts, E)
        owner = np.repeat(np.arange(len(candidates)), counts)
        agg = aggregate_clip_scores((clip_vectors @ query)[None, :], owner, how, scale)[0]  # (V_q,)
        top = np.argsort(-agg, kind="stable")[:k]
        videos[q, :len(top)], scores[q, :len(top)] = candidates[top], agg[top]
    return videos, scores


# --------------------------------------------------------------------------------------- the index


class VideoIndex:
    """A FAISS index over a video gallery with its row -> (video_id, clip) map and its build record."""

    def __init__(self, index: faiss.Index, ids: pa.Table, info: dict[str, Any]):
        """Wrap a filled index; `ids` has one row per index vector, sorted by (video_id, clip)."""
        self.index, self.ids, self.info = index, ids, info
        names = np.asarray(ids["video_id"].to_numpy(zero_copy_only=False), dtype=object)  # (N,)
        first = np.concatenate([[True], names[1:] != names[:-1]]) if len(names) else np.zeros(0, bool)
        self._video_start = np.flatnonzero(first)  # (V,) first row of each video
        self._video_count = np.diff(np.append(self._video_start, len(names)))  # (V,)
        self._clip_video = np.cumsum(first) - 1  # (N,) video number of each row
        self._names = names[self._video_start]  # (V,)
        self._warned_clamp = False

    @property
    def video_ids(self) -> list[str]:
        """The gallery's video ids, sorted."""
        return self._names.tolist()

    @property
    def granularity(self) -> str:
        return self.info["granularity"]

    @classmethod
    def build(cls, emb_dir: str | Path, out_dir: str | Path, *, granularity: str, memory_budget: str | int,
              factory: str = "auto", video_ids: Sequence[str] | None = None, provenance: dict[str, Any] | None = None,
              seed: int = 0, n_queries: int = 500, target_recall: float = 0.95,
              logit_scale: float = DEFAULT_LOGIT_SCALE, use_gpu: bool | None = None,
              add_fn: AddFn | None = None) -> VideoIndex:
        """Build, tune and save an index over an embeddings directory; returns it loaded.

        Args:
            emb_dir: embeddings directory (shards/*.parquet).
            out_dir: where index.faiss, ids.parquet and index.json go (created; an old index is replaced).
            granularity: "video" or "clips".
            memory_budget: bytes or a size such as "4G", for the automatic choice.
            factory: a faiss.index_factory string, or "auto" for choose_index.
            provenance: recorded as is (checkpoint path and hash, clips N, frames T: the caller's).
            n_queries: probe queries (gallery samples plus noise) for tuning and the recorded recall@10.
            add_fn: fills a trained empty index from the gallery elsewhere (e.g. pipelines.index.sharded_add);
                then no more than the training sample and one shard at a time is held here.
        Returns:
            the saved index, ready to search (its index.json record in ``.info``).
        """
        started = time.perf_counter()
        gallery = open_gallery(emb_dir, granularity, video_ids)
        budget = parse_memory(memory_budget)
        chosen = choose_index(gallery.size, gallery.dim, budget) if factory == "auto" else factory
        logger.info("indexing %d %s vectors of dim %d with %s", gallery.size, granularity, gallery.dim, chosen)
        index, queries, truth = _fill_and_probe(gallery, chosen, seed, n_queries, use_gpu, add_fn)
        if granularity == "clips":
            enable_reconstruct(index)
        tuned = tune_search(index, None, queries, truth.shape[1], target_recall, truth=truth)
        info = _info(gallery, chosen, factory == "auto", budget, tuned, len(queries), provenance,
                     {"seed": seed, "logit_scale": logit_scale, "sharded": add_fn is not None,
                      "build_seconds": round(time.perf_counter() - started, 3)})
        save_index(out_dir, index, gallery.ids(), info)
        return cls(index, gallery.ids(), info)

    @classmethod
    def load(cls, index_dir: str | Path) -> VideoIndex:
        """Read an index directory; ValueError when its files disagree or index.faiss is unreadable."""
        index_dir = Path(index_dir)
        if not index_dir.is_dir():
            raise FileNotFoundError(f"index directory {index_dir} does not exist")
        for name in (INFO_FILE, IDS_FILE, INDEX_FILE):
            if not (index_dir / name).is_file():
                raise FileNotFoundError(f"{index_dir / name} is missing (an incomplete or foreign index directory)")
        info = _read_json(index_dir / INFO_FILE)
        ids = _read_ids(index_dir / IDS_FILE)
        index = _read_faiss(index_dir / INDEX_FILE)
        if ids.num_rows != index.ntotal:
            raise ValueError(f"{index_dir}: {IDS_FILE} has {ids.num_rows:,} rows but {INDEX_FILE} holds "
                             f"{index.ntotal:,} vectors")
        if info.get("granularity") == "clips":
            enable_reconstruct(index)
        param = info.get("search_parameter") or {}
        set_search_parameter(index, param.get("name"), param.get("value"))
        return cls(index, ids, info)

    def search(self, queries: np.ndarray, k: int, aggregate: str = "max") -> tuple[list[list[str]], np.ndarray]:
        """Top-k videos per query.

        Args:
            queries: float32 (Q, E), L2-normalised text embeddings.
            k: videos per query; clamped to the gallery size (logged once).
            aggregate: clip aggregation of a "clips" index: "max", "mean" or "lse" (ignored for "video").
        Returns:
            video ids (Q lists of k; "" where fewer were found) and scores float32 (Q, k) (-inf there).
        """
        check_choice("aggregation", aggregate, AGGREGATIONS)
        queries = self._check_queries(queries)
        k = self._clamp(k)
        if self.granularity == "clips":
            videos, scores = search_clips(self.index, queries, k, self._clip_video, self._video_start,
                                          self._video_count, aggregate, self.info.get("logit_scale",
                                                                                      DEFAULT_LOGIT_SCALE))
        else:
            scores, rows = self.index.search(queries, k)  # (Q, k) each
            videos = np.where(rows >= 0, self._clip_video[np.maximum(rows, 0)], -1)
            scores = np.where(rows >= 0, scores, -np.inf)
        names = np.append(self._names, "")  # index -1 -> ""
        return [names[row].tolist() for row in videos], scores.astype(np.float32)

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        """Queries as contiguous float32 (Q, E); ValueError on another shape."""
        queries = np.ascontiguousarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise ValueError(f"queries must be (Q, {self.index.d}); got {queries.shape}")
        return queries

    def _clamp(self, k: int) -> int:
        """k limited to the number of videos (one log message per index)."""
        if k <= 0:
            raise ValueError(f"k must be positive; got {k}")
        if k > len(self._names) and not self._warned_clamp:
            logger.warning("k=%d exceeds the %d videos of the index; returning %d per query",
                           k, len(self._names), len(self._names))
            self._warned_clamp = True
        return min(k, len(self._names))


def _fill_and_probe(gallery: Gallery, factory: str, seed: int, n_queries: int, use_gpu: bool | None,
                    add_fn: AddFn | None) -> tuple[faiss.Index, np.ndarray, np.ndarray]:
    """The filled index, probe queries float32 (Q, E) and their exact top-k rows int64 (Q, k), k = min(10, n)."""
    probe_rows = sample_rows(gallery.size, n_queries, seed + 1)
    k = min(RECALL_K, gallery.size)
    if add_fn is None:
        vectors = gallery.vectors()  # (n, E)
        index = build_index(vectors, factory, seed=seed, use_gpu=use_gpu)
        queries = make_queries(vectors[probe_rows], seed)
        return index, queries, exact_search(vectors, queries, k)[1]
    index = add_fn(train_empty_index(gallery, factory, seed=seed), gallery)
    queries = make_queries(gallery.vectors(probe_rows), seed)
    return index, queries, exact_search_gallery(gallery, queries, k)[1]


def _info(gallery: Gallery, factory: str, auto: bool, budget: int, tuned: dict[str, Any], n_queries: int,
          provenance: dict[str, Any] | None, extra: dict[str, Any]) -> dict[str, Any]:
    """The index.json record."""
    try:
        estimate: int | None = estimate_memory(factory, gallery.size, gallery.dim)
    except ValueError:
        estimate = None
    if estimate is not None and estimate > budget:
        logger.warning("%s needs about %d bytes, over the budget of %d", factory, estimate, budget)
    n_videos = len(pc.unique(gallery.table["video_id"]))
    return {"provenance": dict(provenance or {}), "granularity": gallery.granularity, "factory": factory,
            "factory_auto": auto, "metric": "inner_product", "vectors": gallery.size, "dim": gallery.dim,
            "videos": n_videos, "memory_budget_bytes": budget, "memory_estimate_bytes": estimate,
            "search_parameter": {"name": tuned["parameter"], "value": tuned["value"]},
            "recall_at_10": tuned["recall"], "recall_k": tuned["k"], "recall_queries": n_queries,
            "embeddings": str(gallery.emb_dir), **extra}


# ---------------------------------------------------------------------------------------- files


def save_index(out_dir: str | Path, index: faiss.Index, ids: pa.Table, info: dict[str, Any]) -> None:
    """Write index.faiss (CPU form), ids.parquet and, last, index.json, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INFO_FILE).unlink(missing_ok=True)  # the directory reads as incomplete until the new one lands
    _atomic_write(out_dir / INDEX_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
    _atomic_write(out_dir / IDS_FILE, lambda tmp: pq.write_table(ids, tmp))
    _atomic_write(out_dir / INFO_FILE, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """write(tmp) then rename tmp over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_faiss(path: Path) -> faiss.Index:
    """faiss.read_index with an error naming the file."""
    try:
        return faiss.read_index(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "read error"
        raise ValueError(f"cannot read FAISS index {path} (corrupt or truncated?): {first_line}") from error


def _read_ids(path: Path) -> pa.Table:
    """ids.parquet with an error naming the file."""
    try:
        return pq.read_table(path, columns=["video_id", "clip"])
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def _read_json(path: Path) -> dict[str, Any]:
    """index.json with an error naming the file."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"cannot parse {path}: {error}") from error
