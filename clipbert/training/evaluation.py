"""Dense-inference evaluation: N uniform clips per video, clip consensus, then retrieval / MC / QA metrics.

Retrieval is scored as the original: every (caption, video) pair through the cross-encoder (clipbert.model.scoring),
but the CNN runs once per video rather than once per text batch. With contrastive heads, the dual-encoder
scores are reported too (keys prefixed ``itc_``). Image-text pretraining reports ITM and MLM accuracy and loss on
held-out captions (clipbert.training.pretraining).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from clipbert.data.clips import video_batch
from clipbert.config import Config
from clipbert.data.annotations import Row, retrieval_eval_lists
from clipbert.model.losses import predict
from clipbert.training.metrics import mc_accuracy, qa_accuracy, retrieval_metrics, text_to_video_ranks, two_stage_t2v_r1
from clipbert.model.clipbert import ClipBert
from clipbert.training.pretraining import METRICS as PRETRAIN_METRICS
from clipbert.training.pretraining import evaluate_pretrain
from clipbert.model.scoring import (
    FUSE_WEIGHTS,
    autocast,
    chunks,
    clip_embeddings,
    cross_scores,
    fuse,
    text_embeddings,
    tokenize_texts,
    video_grids,
)


@torch.no_grad()
def retrieval_scores(
    model: ClipBert, cfg: Config, video_ids: Sequence[str], captions: Sequence[str], device: torch.device,
    *, video_batch_size: int = 8, text_batch_size: int = 64, n_clips: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """All-pairs cross-encoder scores (n_captions, n_videos) and, with contrastive heads, ITC similarities.

    ``n_clips`` overrides the N dense clips per video (default ``sampling.inference_n_clips``).
    """
    ids, mask = tokenize_texts(cfg, captions, device)  # (M, L)
    scores = np.zeros((len(captions), len(video_ids)), dtype=np.float32)
    video_emb = []
    for vs, grid in video_grids(model, cfg, video_ids, device, n_clips=n_clips, batch_size=video_batch_size):
        with autocast(device, cfg.train.precision):
            scores[:, vs] = cross_scores(model, grid, ids, mask, cfg.model.consensus,
                                         text_batch_size=text_batch_size).cpu().numpy()  # (M, b)
            if cfg.model.contrastive:
                video_emb.append(clip_embeddings(model, grid)[1])  # (b, E)
    if not cfg.model.contrastive:
        return scores, None
    text = text_embeddings(model, ids, mask, cfg.train.precision)  # (M, E)
    return scores, (text @ torch.cat(video_emb).t()).cpu().numpy()  # (n_captions, n_videos)


RERANK_DEPTHS = (4, 8, 16)  # two-stage search depths scored at every evaluation


def choose_fuse_weight(cross: np.ndarray, itc: np.ndarray, gt: np.ndarray) -> float:
    """The FUSE_WEIGHTS entry whose fused score ranks these (validation) pairs best: highest t2v R@1, then the
    lowest mean rank, then the smallest weight."""
    def key(w: float) -> tuple[float, float, float]:
        ranks = text_to_video_ranks(fuse(cross, itc, w), gt)  # (n_text,): t2v only, v2t is not needed here
        return float(np.mean(ranks <= 1)), -float(np.mean(ranks)), -w
    return max(FUSE_WEIGHTS, key=key)


def fused_metrics(cross: np.ndarray, itc: np.ndarray, gt: np.ndarray, weight: float | None) -> dict[str, float]:
    """Figures of the re-rank score (ITM margin + weight * ITC, the weight chosen here when None): all pairs
    (``fused_*``), two-stage search at RERANK_DEPTHS over the dual encoder's candidates with the fused score
    (``rerank{d}_t2v_r1``) and with the margin alone (``rerank{d}_itm_t2v_r1``), and ``fuse_weight``."""
    w = choose_fuse_weight(cross, itc, gt) if weight is None else float(weight)
    fused = fuse(cross, itc, w)
    out = {f"fused_{k}": v for k, v in retrieval_metrics(fused, gt).items()}
    for d in RERANK_DEPTHS:
        out[f"rerank{d}_t2v_r1"] = two_stage_t2v_r1(fused, itc, gt, d)
        out[f"rerank{d}_itm_t2v_r1"] = two_stage_t2v_r1(cross, itc, gt, d)
    out["fuse_weight"] = w
    return out


@torch.no_grad()
def choice_predictions(model: ClipBert, cfg: Config, rows: Sequence[Row], device: torch.device,
                       batch_size: int = 8) -> np.ndarray:
    """Argmax over each row's K texts (MC options scored by the MC or ITM head) or over the QA answers."""
    preds = []
    for rs in chunks(len(rows), batch_size):
        chunk = rows[rs]
        frames = torch.from_numpy(video_batch([r["video_id"] for r in chunk], cfg)).to(device)
        k = len(chunk[0]["texts"])
        ids, mask = tokenize_texts(cfg, [t for r in chunk for t in r["texts"]], device)
        with autocast(device, cfg.train.precision):
            logits = model(frames, ids.view(len(chunk), k, -1), mask.view(len(chunk), k, -1))  # (b, K, N, C)
        preds.append(predict(cfg.model.head, logits, cfg.model.consensus).cpu().numpy())
    return np.concatenate(preds)


def evaluate(model: ClipBert, cfg: Config, rows: Sequence[Row], device: torch.device,
             mc_rows: Sequence[Row] = (), fuse_weight: float | None = None) -> dict[str, float]:
    """Validation metrics of ``rows`` (the task's format); ``mc_rows`` adds multiple-choice accuracy (``mc_acc``)
    scored with the retrieval (ITM) head, as the original's MSRVTT-MC protocol. With contrastive heads, retrieval
    adds the re-rank score's figures (``fused_metrics``) at ``fuse_weight``, chosen on these rows when None (on
    validation; the test split takes validation's)."""
    was_training = model.training
    model.eval()
    try:
        metrics: dict[str, float] = {}
        if cfg.data.task == "pretrain":
            metrics.update(evaluate_pretrain(model, cfg, rows, device))
        elif cfg.data.task == "retrieval":
            video_ids, captions, gt = retrieval_eval_lists(rows)
            scores, itc = retrieval_scores(model, cfg, video_ids, captions, device)
            metrics.update(retrieval_metrics(scores, gt))
            if itc is not None:
                metrics.update({f"itc_{k}": v for k, v in retrieval_metrics(itc, gt).items()})
                metrics.update(fused_metrics(scores, itc, gt, fuse_weight))
        elif cfg.data.task == "mc":
            metrics.update(mc_accuracy(choice_predictions(model, cfg, rows, device), [r["label"] for r in rows]))
        else:
            preds = choice_predictions(model, cfg, rows, device)
            metrics.update(qa_accuracy(preds, [r["label"] for r in rows], [r["answer_type"] for r in rows]))
        if mc_rows:
            metrics.update(mc_accuracy(choice_predictions(model, cfg, mc_rows, device), [r["label"] for r in mc_rows]))
        return metrics
    finally:
        model.train(was_training)


def metric_names(cfg: Config, rows: Sequence[Row], mc_rows: Sequence[Row] = ()) -> set[str]:
    """The keys ``evaluate`` reports for these rows, without running a model (the metric functions applied to
    perfect predictions): what a sweep or a checkpoint ranking may name."""
    if cfg.data.task == "pretrain":
        names = set(PRETRAIN_METRICS)
    elif cfg.data.task == "retrieval":
        _, _, gt = retrieval_eval_lists(rows)
        names = set(retrieval_metrics(np.eye(len(gt), int(gt.max()) + 1), gt))
        if cfg.model.contrastive:
            names |= {f"itc_{k}" for k in names} | {f"fused_{k}" for k in names} | {"fuse_weight"}
            names |= {f"rerank{d}{kind}_t2v_r1" for d in RERANK_DEPTHS for kind in ("", "_itm")}
    else:
        labels = [r["label"] for r in rows]
        types = [r["answer_type"] for r in rows] if cfg.data.task == "qa" else None
        names = set(mc_accuracy(labels, labels) if types is None else qa_accuracy(labels, labels, types))
    if mc_rows:
        names.add("mc_acc")
    return names
