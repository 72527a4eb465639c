"""Sharded FAISS build on Ray: train once in the driver, add embedding shards in parallel tasks, merge.

For IVF types (IVF-Flat, IVF-PQ, OPQ+IVF+PQ) whose raw vectors do not fit one machine: the driver reads the
ids and a seeded training sample only, trains, and ships the serialized empty index to ``num_tasks`` Ray
tasks; each adds its shards with the global row ids (the gallery's (video_id, clip) order) and returns its
serialized partial index; the driver merges the partial indexes in task order. The result holds the same
codes under the same ids as ``clipbert.retrieval.index_build.build_index`` on all vectors with the same seed, so it searches
the same (only the order of equal-score hits may differ).
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import ray

from clipbert.retrieval.embeddings import Gallery, read_shard_vectors
from clipbert.retrieval.index_build import AddFn, add_in_chunks

logger = logging.getLogger(__name__)

ShardJob = tuple[str, str, np.ndarray, np.ndarray, np.ndarray]  # path, granularity, rows, clips, global ids


@ray.remote
def _add_shards(trained: np.ndarray, jobs: list[ShardJob]) -> np.ndarray:
    """Deserialize the trained empty index, add each job's vectors with their ids; serialized index (bytes,)."""
    index = faiss.deserialize_index(trained)
    for path, granularity, rows, clips, ids in jobs:
        add_in_chunks(index, read_shard_vectors(path, granularity, rows, clips), ids)
    return faiss.serialize_index(index)


def shard_jobs(gallery: Gallery, num_tasks: int) -> list[list[ShardJob]]:
    """Split the gallery's shards over `num_tasks` groups, balancing vector counts (largest shard first).

    Returns:
        up to num_tasks non-empty lists of (path, granularity, rows in shard, clips, gallery rows) jobs.
    """
    shard, row, clip = (gallery.table[c].to_numpy() for c in ("shard", "row", "clip"))
    jobs = []
    for s, path in enumerate(gallery.shards):
        positions = np.flatnonzero(shard == s)  # (n_s,) gallery rows (global ids) stored in this shard
        if len(positions):
            jobs.append((str(path), gallery.granularity, row[positions], clip[positions], positions))
    groups: list[list[ShardJob]] = [[] for _ in range(max(1, num_tasks))]
    loads = np.zeros(len(groups), np.int64)
    for job in sorted(jobs, key=lambda j: -len(j[4])):
        target = int(np.argmin(loads))
        groups[target].append(job)
        loads[target] += len(job[4])
    return [g for g in groups if g]


def add_sharded(trained: faiss.Index, gallery: Gallery, num_tasks: int) -> faiss.Index:
    """Fill a trained, empty IVF index with the gallery in `num_tasks` Ray tasks and merge the parts.

    Args:
        trained: an empty index whose type has an IVF layer (it takes add_with_ids and merges).
        gallery: the vectors to add; gallery row i gets id i.
        num_tasks: parallel add tasks (at most one per shard is useful).
    Returns:
        the filled index (CPU), ntotal == gallery.size.
    """
    if faiss.try_extract_index_ivf(trained) is None:
        raise ValueError("a sharded build needs an IVF index type (IVF-Flat, IVF-PQ, OPQ+IVF+PQ); "
                         f"got {type(faiss.downcast_index(trained)).__name__}")
    if trained.ntotal:
        raise ValueError(f"the index to fill must be empty; it holds {trained.ntotal} vectors")
    blob = ray.put(faiss.serialize_index(trained))
    refs = [_add_shards.remote(blob, group) for group in shard_jobs(gallery, num_tasks)]
    logger.info("adding %d vectors from %d shards in %d tasks", gallery.size, len(gallery.shards), len(refs))
    merged = faiss.deserialize_index(ray.get(refs[0]))
    for ref in refs[1:]:
        part = faiss.deserialize_index(ray.get(ref))
        faiss.merge_into(merged, part, False)  # keep the global ids
        del part
    if merged.ntotal != gallery.size:
        raise RuntimeError(f"merged index holds {merged.ntotal} vectors; the gallery has {gallery.size}")
    return merged


def sharded_add(num_tasks: int) -> AddFn:
    """An `add_fn` for clipbert.retrieval.index.VideoIndex.build that fills the index with add_sharded."""

    def add(trained: faiss.Index, gallery: Gallery) -> faiss.Index:
        return add_sharded(trained, gallery, num_tasks)

    return add

