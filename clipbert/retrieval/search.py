"""Two-stage text-to-video search: FAISS recalls candidates with the dual encoder, the cross-encoder re-ranks them.

A query is encoded with the checkpoint's text head (``encode_text``), the index returns the top candidates by
dual-encoder similarity (one vector per video, or per clip aggregated per video), and the ClipBERT cross-encoder
scores the first ``rerank`` of them with N dense clips per video and clip consensus (the index's N, the
checkpoint's consensus): only ``rerank`` pair passes per query instead of one per gallery video. The re-rank
score is the ITM margin plus the dual-encoder score times the weight the checkpoint's run chose on validation
(``scoring.fuse``; ``rerank.json`` beside the weights, 0 without it).
``evaluate_search`` runs the held-out retrieval protocol over dual-only, two-stage and all-pairs scoring.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from clipbert.model.checkpoint import checkpoint_hash, load_checkpoint, rerank_weight
from clipbert.retrieval.index import VideoIndex
from clipbert.model.scoring import fuse, pair_scores, text_embeddings, tokenize_texts
from clipbert.data.text import cached_tokenizer

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Hit:
    """One ranked video of a query."""

    rank: int  # 1-based
    video_id: str
    dual_score: float  # dual-encoder similarity (cosine, or the clip aggregate)
    rerank_score: float | None  # the re-rank score (ITM margin + weight * dual); None below the re-ranked depth


class Searcher:
    """The model, the index and the frame store, loaded once; ``search`` answers text queries.

    Args:
        index_dir: a directory written by jobs/build_index.py.
        checkpoint: the checkpoint to encode and re-rank with (default: the one the index was built from;
            another one is used with a warning naming both hashes).
        frame_store: where the gallery's frames are (default: the store the index was built from).
        tokenizer: a tokenizer directory (default: the checkpoint config's data.tokenizer).
        device: torch device of the model.
    """

    def __init__(self, index_dir: str | Path, *, checkpoint: str | None = None, frame_store: str | None = None,
                 tokenizer: str | None = None, device: str = "cpu"):
        self.index = VideoIndex.load(index_dir)
        built = self.index.info.get("provenance", {})
        checkpoint = checkpoint or built["checkpoint"]
        self.checkpoint_hash = checkpoint_hash(checkpoint)
        if self.checkpoint_hash != built.get("checkpoint_hash"):
            logger.warning("index %s was built from checkpoint %s (hash %s), searching with %s (hash %s): the "
                           "query embeddings may not match the index", index_dir, built.get("checkpoint"),
                           built.get("checkpoint_hash"), checkpoint, self.checkpoint_hash)
        self.device = torch.device(device)
        self.model, self.cfg = load_checkpoint(checkpoint, map_location=self.device)
        self.fuse_weight = rerank_weight(checkpoint)
        self.model.eval()
        self.cfg.data.frame_store = frame_store or built["frame_store"]
        self.cfg.data.tokenizer = tokenizer or self.cfg.data.tokenizer
        if not os.path.exists(self.cfg.data.tokenizer):
            raise FileNotFoundError(f"tokenizer not found: {self.cfg.data.tokenizer} (pass --tokenizer)")
        self.n_clips = int(built["n_clips"])
        self._warned_long = False

    @property
    def gallery_size(self) -> int:
        return len(self.index.video_ids)

    def check_queries(self, queries: Sequence[str]) -> list[str]:
        """Stripped queries; ValueError on an empty one; a query past the text limit is truncated (said once)."""
        out = [q.strip() for q in queries]
        if not out or any(not q for q in out):
            raise ValueError("empty query: give some text to search for")
        limit = self.cfg.data.max_txt_len - 2  # [CLS] and [SEP]
        longest = max(len(cached_tokenizer(self.cfg.data.tokenizer).tokenize(q)) for q in out)
        if longest > limit and not self._warned_long:
            logger.warning("queries longer than %d word pieces are truncated (the model's data.max_txt_len)", limit)
            self._warned_long = True
        return out

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """Queries -> float32 (Q, E) L2-normalised text embeddings."""
        return self._embed(self.check_queries(queries))

    def _embed(self, checked: Sequence[str]) -> np.ndarray:
        ids, mask = tokenize_texts(self.cfg, checked, self.device)
        return text_embeddings(self.model, ids, mask, self.cfg.train.precision).cpu().numpy()

    def candidates(self, query: np.ndarray, k: int, aggregate: str = "max") -> tuple[list[list[str]], np.ndarray]:
        """First stage: each query embedding's top-k videos by dual-encoder score, best first.

        Returns:
            Q lists of video ids (shorter than k where the index found fewer) and float32 scores (Q, k).
        """
        ids, scores = self.index.search(query, k, aggregate=aggregate)
        return [[v for v in row if v] for row in ids], scores  # "" pads a list shorter than asked

    def rerank(self, queries: Sequence[str], candidates: Sequence[Sequence[str]],
               dual: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Second stage: the re-rank score of each query's candidate videos: the cross-encoder's ITM margin (N dense
        clips, clip consensus) fused with the candidates' dual-encoder scores `dual` (one array per query)."""
        videos = sorted({v for c in candidates for v in c})
        column = {v: i for i, v in enumerate(videos)}
        pairs = np.array([(q, column[v]) for q, c in enumerate(candidates) for v in c], dtype=np.int64)
        scores = pair_scores(self.model, self.cfg, list(queries), videos, pairs.reshape(-1, 2), self.device,
                             n_clips=self.n_clips)
        bounds = np.cumsum([0] + [len(c) for c in candidates])
        return [fuse(scores[a:b], d[:len(c)], self.fuse_weight)
                for a, b, c, d in zip(bounds[:-1], bounds[1:], candidates, dual)]

    def search(self, queries: Sequence[str], *, k: int = 10, rerank: int = 32,
               aggregate: str = "max") -> list[list[Hit]]:
        """Ranked hits per query: the top `rerank` candidates re-ranked by the cross-encoder, then the rest of
        the top `k` in dual-encoder order. `k` and `rerank` are clamped to the gallery size."""
        queries = self.check_queries(queries)
        k, rerank = self.depths(k, rerank)
        found, dual = self.candidates(self._embed(queries), max(k, rerank), aggregate)
        cross = self.rerank(queries, [row[:rerank] for row in found], dual) if rerank else [np.zeros(0)] * len(found)
        return [merge_hits(row, d, c, k) for row, d, c in zip(found, dual, cross)]

    def depths(self, k: int, rerank: int) -> tuple[int, int]:
        """(k, rerank) clamped to the gallery size; ValueError when k < 1 or rerank < 0 (0: no re-ranking)."""
        if rerank < 0:
            raise ValueError(f"rerank must be >= 0, got {rerank}")
        return self._clamp(k, "k"), self._clamp(rerank, "rerank") if rerank > 0 else 0

    def _clamp(self, value: int, name: str) -> int:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        if value > self.gallery_size:
            logger.info("%s=%d is more than the %d videos of the gallery: using %d", name, value,
                        self.gallery_size, self.gallery_size)
        return min(value, self.gallery_size)


def merge_hits(ids: Sequence[str], dual: np.ndarray, cross: np.ndarray, k: int) -> list[Hit]:
    """One query's hits: its re-ranked candidates (by cross score, `cross` (R,) for the first R of `ids`) first, then
    the remaining dual-ranked ones (`dual` (>= len(ids),)), cut at k."""
    order = list(np.argsort(-cross, kind="stable")) + list(range(len(cross), len(ids)))
    return [Hit(rank + 1, ids[i], float(dual[i]), float(cross[i]) if i < len(cross) else None)
            for rank, i in enumerate(order[:k])]
