"""Building FAISS indexes: an empty index from a factory string, seeded training, chunked adds, GPU builds.

``build_index`` trains and fills an index from vectors in memory; ``train_empty_index`` trains one on a gallery
sample only, for a caller that adds the vectors elsewhere (pipelines/index.py adds shards in Ray tasks).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import faiss
import numpy as np

from clipbert.retrieval.embeddings import Gallery, check_choice
from clipbert.retrieval.index_choice import MIN_POINTS_PER_CENTROID

logger = logging.getLogger(__name__)

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
TRAIN_POINTS_PER_CENTROID = 64
ADD_CHUNK = 65_536  # vectors per add call

AddFn = Callable[[faiss.Index, Gallery], faiss.Index]  # (trained empty index, gallery) -> filled index

_GPU_RESOURCES: list[Any] = []  # one StandardGpuResources per process, created on first use


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
