"""Evaluation metrics: retrieval recall/rank in both directions, QA and multiple-choice accuracy (percent).

Ties are resolved pessimistically everywhere: an item's rank is the number of candidates whose score is
greater than OR EQUAL to its own (itself included), so a constant score matrix ranks every ground truth
last. The original sorts with ``torch.sort`` after rounding scores to 4 decimals, which orders ties
arbitrarily; pessimistic ranks are a lower bound on its recall.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def _rank_summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    """R@1/5/10 in percent, median and mean of 1-indexed ranks."""
    return {
        f"{prefix}_r1": float(100.0 * np.mean(ranks <= 1)),
        f"{prefix}_r5": float(100.0 * np.mean(ranks <= 5)),
        f"{prefix}_r10": float(100.0 * np.mean(ranks <= 10)),
        f"{prefix}_medr": float(np.median(ranks)),
        f"{prefix}_meanr": float(np.mean(ranks)),
    }


def text_to_video_ranks(scores: np.ndarray, text_to_video_gt: np.ndarray) -> np.ndarray:
    """1-indexed pessimistic rank of each text's correct video among all videos. scores: (n_text, n_video)."""
    gt_scores = scores[np.arange(len(scores)), text_to_video_gt]  # (n_text,)
    return (scores >= gt_scores[:, None]).sum(axis=1)  # (n_text,)


def video_to_text_ranks(scores: np.ndarray, text_to_video_gt: np.ndarray) -> np.ndarray:
    """For each video with >= 1 caption: the best pessimistic rank of any of its captions among all texts."""
    best: dict[int, int] = {}
    for text, video in enumerate(text_to_video_gt):
        column = scores[:, video]  # (n_text,)
        rank = int((column >= column[text]).sum())
        best[int(video)] = min(rank, best.get(int(video), rank))
    return np.array([best[v] for v in sorted(best)], dtype=np.int64)


def retrieval_metrics(scores: np.ndarray, text_to_video_gt: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Recall@K (percent), median and mean rank (1-indexed), text->video and video->text, from one score matrix.

    Args:
        scores: (n_text, n_video) similarity, higher is better (e.g. ITM probability).
        text_to_video_gt: (n_text,) column of each text's video. Several texts may share a video.

    Returns:
        t2v_r1, t2v_r5, t2v_r10, t2v_medr, t2v_meanr and the same v2t_* keys. A video counts as correct for
        any of its captions; its v2t rank is the best rank among them. Videos without captions are left
        out of v2t. Ties are pessimistic (see the module docstring).
    """
    scores = np.asarray(scores, dtype=np.float64)
    gt = np.asarray(text_to_video_gt, dtype=np.int64)
    if scores.ndim != 2 or gt.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (n_text, n_video) and gt (n_text,), got {scores.shape} and {gt.shape}")
    if scores.shape[0] == 0:
        raise ValueError("retrieval_metrics needs at least one text")
    if gt.min() < 0 or gt.max() >= scores.shape[1]:
        raise ValueError(f"text_to_video_gt values must be columns in [0, {scores.shape[1]})")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    out = _rank_summary(text_to_video_ranks(scores, gt), "t2v")
    out.update(_rank_summary(video_to_text_ranks(scores, gt), "v2t"))
    return out


def two_stage_t2v_r1(rerank: np.ndarray, first: np.ndarray, text_to_video_gt: Sequence[int] | np.ndarray,
                     depth: int) -> float:
    """R@1 (percent) of two-stage search: each text's `depth` best videos by `first` (the dual encoder), re-ordered
    by `rerank` (the cross-encoder); a text scores when its video is among them and first after re-ranking.
    rerank, first: (n_text, n_video); ties are pessimistic in both stages."""
    first = np.asarray(first, dtype=np.float64)
    rerank = np.asarray(rerank, dtype=np.float64)
    gt = np.asarray(text_to_video_gt, dtype=np.int64)
    rows = np.arange(len(gt))
    in_top = text_to_video_ranks(first, gt) <= depth  # (n_text,)
    kept = first >= np.sort(first, axis=1)[:, -min(depth, first.shape[1])][:, None]  # (n_text, n_video) top depth
    beaten = (kept & (rerank >= rerank[rows, gt][:, None])).sum(axis=1)  # the gt itself counts once
    return float(100.0 * np.mean(in_top & (beaten == 1)))


def qa_accuracy(
    pred: Sequence, gold: Sequence, answer_types: Sequence[str] | None = None
) -> dict[str, float]:
    """Exact-match accuracy in percent: "overall_acc" and, with answer_types, "<type>_acc" for each type.

    Predictions and gold answers may be labels or strings; an answer the model cannot produce (outside
    the training answer vocabulary) simply never matches, as in the original.
    """
    if len(pred) != len(gold) or (answer_types is not None and len(answer_types) != len(gold)):
        raise ValueError("pred, gold (and answer_types) must have the same length")
    if len(gold) == 0:
        raise ValueError("qa_accuracy needs at least one example")
    correct = [p == g for p, g in zip(pred, gold)]
    out = {"overall_acc": 100.0 * float(np.mean(correct))}
    if answer_types is not None:
        per_type: dict[str, list[bool]] = defaultdict(list)
        for kind, ok in zip(answer_types, correct):
            per_type[str(kind)].append(ok)
        out.update({f"{kind}_acc": 100.0 * float(np.mean(v)) for kind, v in sorted(per_type.items())})
    return out


def mc_accuracy(pred: Sequence[int], gold: Sequence[int]) -> dict[str, float]:
    """Multiple-choice accuracy in percent: {"mc_acc": ...}; pred is the chosen option index."""
    if len(pred) != len(gold) or len(gold) == 0:
        raise ValueError("pred and gold must be non-empty and of the same length")
    return {"mc_acc": 100.0 * float(np.mean(np.asarray(pred) == np.asarray(gold)))}
