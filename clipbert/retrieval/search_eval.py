"""The held-out retrieval protocol for search: dual encoder, two-stage at several re-rank depths, and all pairs.

Every method ranks the same gallery (the index's videos) for the same captions (an annotation file of the
retrieval format), and reports text-to-video R@1/5/10 and median rank, the cross-encoder pair passes it spent
and its wall time. Dual-encoder rows come from the embeddings exactly (inner products, clip scores aggregated per
video); two-stage rows run the real path (index search, then cross-encoder re-ranking of the top candidates, the
rest of the ranking left in dual order, by the re-rank score); the all-pairs rows are the original's protocol
(every caption x video through the cross-encoder), by the ITM margin alone and by the re-rank score.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clipbert.config import CONTRASTIVE_LOGIT_SCALE
from clipbert.data.annotations import load_annotations, retrieval_eval_lists
from clipbert.retrieval.embeddings import load_embeddings
from clipbert.training.evaluation import retrieval_scores
from clipbert.retrieval.index import AGGREGATIONS, aggregate_clip_scores
from clipbert.training.metrics import retrieval_metrics
from clipbert.model.scoring import fuse
from clipbert.retrieval.search import Searcher

logger = logging.getLogger(__name__)

DEPTHS = (4, 8, 16, 32, 64, 128)
ROW_KEYS = ("method", "rerank", "t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "cross_passes", "seconds")


def _row(method: str, rerank: int, scores: np.ndarray, gt: np.ndarray, passes: int, seconds: float) -> dict:
    m = retrieval_metrics(scores, gt)
    return {"method": method, "rerank": rerank, "t2v_r1": m["t2v_r1"], "t2v_r5": m["t2v_r5"],
            "t2v_r10": m["t2v_r10"], "t2v_medr": m["t2v_medr"], "cross_passes": passes, "seconds": seconds}


def dual_rows(query: np.ndarray, emb_dir: str, gallery: list[str], gt: np.ndarray, scale: float,
              encode_s: float) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Exact dual-encoder rankings: video granularity and clip granularity under each aggregation."""
    rows, full = [], {}
    t0 = time.perf_counter()
    vectors, ids = load_embeddings(emb_dir, "video", gallery)
    assert ids.column("video_id").to_pylist() == gallery, "embeddings and gallery order differ"
    full["video"] = query @ vectors.T  # (Q, V)
    rows.append(_row("dual (video)", 0, full["video"], gt, 0, encode_s + time.perf_counter() - t0))
    vectors, ids = load_embeddings(emb_dir, "clips", gallery)
    column = {v: i for i, v in enumerate(gallery)}
    video_of_clip = np.array([column[v] for v in ids.column("video_id").to_pylist()])  # (C,)
    for how in AGGREGATIONS:
        t0 = time.perf_counter()
        full[f"clips-{how}"] = aggregate_clip_scores(query @ vectors.T, video_of_clip, how, scale)  # (Q, V)
        rows.append(_row(f"dual (clips, {how})", 0, full[f"clips-{how}"], gt, 0,
                         encode_s + time.perf_counter() - t0))
    return rows, full


def two_stage_row(searcher: Searcher, captions: list[str], query: np.ndarray, dual_full: np.ndarray,
                  column: dict[str, int], gt: np.ndarray, depth: int, encode_s: float) -> dict:
    """Index top-`depth` candidates re-ranked by the cross-encoder; below them the dual order."""
    t0 = time.perf_counter()
    ids, dual = searcher.candidates(query, depth)
    cross = searcher.rerank(captions, ids, dual)
    seconds = encode_s + time.perf_counter() - t0
    top = max((float(np.abs(c).max()) for c in cross if len(c)), default=0.0)
    scores = dual_full - (np.abs(dual_full).max() + top + 2.0)  # below every re-rank score
    for q, (row, c) in enumerate(zip(ids, cross)):
        scores[q, [column[v] for v in row]] = c
    return _row("two-stage", depth, scores, gt, len(captions) * depth, seconds)


def evaluate_search(searcher: Searcher, annotations: str | Path, *, depths: Sequence[int] = DEPTHS,
                    all_pairs: bool = True) -> list[dict[str, Any]]:
    """Run the protocol on the retrieval captions of `annotations` over the index's gallery; one dict per method."""
    gallery = list(searcher.index.video_ids)
    rows, _ = load_annotations(annotations, task="retrieval", known_video_ids=set(gallery))
    _, captions, _ = retrieval_eval_lists(rows)
    column = {v: i for i, v in enumerate(gallery)}
    gt = np.array([column[r["video_id"]] for r in rows], dtype=np.int64)  # (Q,)
    logger.info("evaluating %d captions against a gallery of %d videos", len(captions), len(gallery))
    t0 = time.perf_counter()
    query = searcher.encode(captions)  # (Q, E)
    encode_s = time.perf_counter() - t0
    info = searcher.index.info
    scale = float(info.get("logit_scale", CONTRASTIVE_LOGIT_SCALE))
    out, full = dual_rows(query, info["embeddings"], gallery, gt, scale, encode_s)
    dual_full = full["video"] if info["granularity"] == "video" else full["clips-max"]
    for depth in sorted({min(d, len(gallery)) for d in depths}):
        out.append(two_stage_row(searcher, captions, query, dual_full, column, gt, depth, encode_s))
        _log(out[-1])
    if all_pairs:
        t0 = time.perf_counter()
        scores, _ = retrieval_scores(searcher.model, searcher.cfg, gallery, captions, searcher.device,
                                     n_clips=searcher.n_clips)
        seconds = time.perf_counter() - t0
        out.append(_row("all-pairs cross-encoder", len(gallery), scores, gt, scores.size, seconds))
        _log(out[-1])
        fused = fuse(scores, dual_full, searcher.fuse_weight)
        out.append(_row("all-pairs re-rank score", len(gallery), fused, gt, scores.size, seconds))
        _log(out[-1])
    return out


def _log(row: dict[str, Any]) -> None:
    logger.info("%s (rerank %d): R@1 %.1f, %d cross-encoder passes, %.1f s", row["method"], row["rerank"],
                row["t2v_r1"], row["cross_passes"], row["seconds"])
