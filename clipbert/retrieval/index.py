"""Video search index: embedding shards -> a FAISS index chosen under a memory budget -> top-k videos per query.

The vectors come from an embeddings directory (clipbert/retrieval/embeddings.py); every vector is L2-normalised, so
inner product is cosine.

Two granularities: ``video`` (one vector per video) and ``clips`` (one per clip; a query over-fetches clips,
then scores every candidate video over all of its clips and aggregates with max / mean / LogSumExp, the clip
consensus of clipbert/model/losses.py). Rows are sorted by (video_id, clip): row i of ``ids.parquet`` is FAISS id i.
The choice of index is clipbert/retrieval/index_choice.py, its build clipbert/retrieval/index_build.py, its recall tuning
clipbert/retrieval/index_tuning.py and its files clipbert/retrieval/index_files.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from clipbert.config import CONTRASTIVE_LOGIT_SCALE
from clipbert.retrieval.embeddings import Gallery, check_choice, concat_ranges, open_gallery
from clipbert.retrieval.index_build import AddFn, build_index, enable_reconstruct, sample_rows, train_empty_index
from clipbert.retrieval.index_choice import choose_index, estimate_memory, parse_memory
from clipbert.retrieval.index_files import read_index_dir, save_index
from clipbert.retrieval.index_tuning import (RECALL_K, exact_search, exact_search_gallery, make_queries, set_search_parameter,
                                   tune_search)
from clipbert.model.losses import consensus

logger = logging.getLogger(__name__)

AGGREGATIONS = ("max", "mean", "lse")


# ---------------------------------------------------------------------------------- clip aggregation


def aggregate_clip_scores(sims: np.ndarray, video_of_clip: np.ndarray, how: str = "max",
                          scale: float = CONTRASTIVE_LOGIT_SCALE) -> np.ndarray:
    """Per-video scores from per-clip similarities: the clip consensus (losses.consensus) over each video's clips.

    Videos with the same number of clips are pooled together, as one (Q, V_c, c) block.

    Args:
        sims: (Q, C) query-clip similarities.
        video_of_clip: (C,) int video number 0..V-1 of each clip.
        how: "max", "mean" or "lse" (log(sum(exp(scale * s))) / scale over the video's clips).
        scale: logit scale of "lse".
    Returns:
        float32 (Q, V), V = video_of_clip.max() + 1; -inf for videos without clips.
    """
    check_choice("aggregation", how, AGGREGATIONS)
    sims_t = torch.from_numpy(np.asarray(sims, np.float64))  # (Q, C)
    owner = np.asarray(video_of_clip, np.int64)
    n_videos = int(owner.max()) + 1 if owner.size else 0
    by_video = np.argsort(owner, kind="stable")  # (C,) clips grouped by video
    counts = np.bincount(owner, minlength=n_videos)  # (V,)
    starts = np.cumsum(counts) - counts  # (V,) first position of each video in by_video
    out = torch.full((sims_t.shape[0], n_videos), -np.inf, dtype=torch.float64)  # (Q, V)
    for count in np.unique(counts[counts > 0]):
        videos = np.flatnonzero(counts == count)  # (V_c,)
        clips = torch.from_numpy(by_video[starts[videos, None] + np.arange(count)])  # (V_c, c)
        out[:, videos] = consensus(sims_t[:, clips], how, dim=-1, scale=scale)  # (Q, V_c, c) -> (Q, V_c)
    return out.numpy().astype(np.float32)


def search_clips(index: faiss.Index, queries: np.ndarray, k: int, clip_video: np.ndarray, video_start: np.ndarray,
                 video_count: np.ndarray, how: str = "max",
                 scale: float = CONTRASTIVE_LOGIT_SCALE) -> tuple[np.ndarray, np.ndarray]:
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
              logit_scale: float = CONTRASTIVE_LOGIT_SCALE, use_gpu: bool | None = None,
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
        index, ids, info = read_index_dir(index_dir)
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
            scale = self.info.get("logit_scale", CONTRASTIVE_LOGIT_SCALE)
            videos, scores = search_clips(self.index, queries, k, self._clip_video, self._video_start,
                                          self._video_count, aggregate, scale)
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
