"""Dense-inference evaluation: N uniform clips per video, clip consensus, then retrieval / MC / QA metrics.

Retrieval is scored as the original: every (caption, video) pair through the cross-encoder
(``softmax(consensus(logits))[1]``), but the CNN runs once per video rather than once per text batch.
With contrastive heads, the dual-encoder scores are reported too (keys prefixed ``itc_``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch

from clipbert.batches import _tokenizer, video_batch
from clipbert.config import Config
from clipbert.data import Row, retrieval_eval_lists
from clipbert.losses import itm_scores, predict
from clipbert.metrics import mc_accuracy, qa_accuracy, retrieval_metrics
from clipbert.model import ClipBert, aggregate_clip_embeddings
from clipbert.text import tokenize


def autocast(device: torch.device, precision: str):
    """torch.autocast for "bf16"/"fp16" on the device's type; a no-op for "fp32"."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _texts(cfg: Config, texts: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenize(_tokenizer(cfg.data.tokenizer), texts, cfg.data.max_txt_len, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)  # (M, L) each


@torch.no_grad()
def retrieval_scores(
    model: ClipBert, cfg: Config, video_ids: Sequence[str], captions: Sequence[str], device: torch.device,
    *, video_batch_size: int = 8, text_batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray | None]:
    """All-pairs cross-encoder scores (n_captions, n_videos) and, with contrastive heads, ITC similarities."""
    ids, mask = _texts(cfg, captions, device)  # (M, L)
    scores = np.zeros((len(captions), len(video_ids)), dtype=np.float32)
    video_emb = []
    for vs in _chunks(len(video_ids), video_batch_size):
        frames = torch.from_numpy(video_batch(video_ids[vs], cfg)).to(device)  # (b, N, T, 3, S, S)
        with autocast(device, cfg.train.precision):
            grid = model.encode_grid(frames)  # (b, N, h, w, D)
            if cfg.model.contrastive:
                video_emb.append(aggregate_clip_embeddings(model.embed_grid(grid)).float())  # (b, E)
            b = grid.shape[0]
            for ts in _chunks(len(captions), text_batch_size):
                k = ts.stop - ts.start
                logits = model.score_grid(grid, ids[ts].expand(b, k, -1), mask[ts].expand(b, k, -1))  # (b, k, N, 2)
                scores[ts, vs] = itm_scores(logits, cfg.model.consensus).float().cpu().numpy().T  # (k, b)
    if not cfg.model.contrastive:
        return scores, None
    with autocast(device, cfg.train.precision):
        text_emb = torch.cat([model.encode_text(ids[ts], mask[ts]).float() for ts in _chunks(len(captions), 256)])
    video = torch.cat(video_emb)  # (n_videos, E)
    return scores, (text_emb @ video.t()).cpu().numpy()  # (n_captions, n_videos)


@torch.no_grad()
def choice_predictions(model: ClipBert, cfg: Config, rows: Sequence[Row], device: torch.device,
                       batch_size: int = 8) -> np.ndarray:
    """Argmax over each row's K texts (MC options scored by the MC or ITM head) or over the QA answers."""
    preds = []
    for rs in _chunks(len(rows), batch_size):
        chunk = rows[rs]
        frames = torch.from_numpy(video_batch([r["video_id"] for r in chunk], cfg)).to(device)
        k = len(chunk[0]["texts"])
        ids, mask = _texts(cfg, [t for r in chunk for t in r["texts"]], device)
        with autocast(device, cfg.train.precision):
            logits = model(frames, ids.view(len(chunk), k, -1), mask.view(len(chunk), k, -1))  # (b, K, N, C)
        preds.append(predict(cfg.model.head, logits, cfg.model.consensus).cpu().numpy())
    return np.concatenate(preds)


def evaluate(model: ClipBert, cfg: Config, rows: Sequence[Row], device: torch.device,
             mc_rows: Sequence[Row] = ()) -> dict[str, float]:
    """Validation metrics of ``rows`` (the task's format); ``mc_rows`` adds multiple-choice accuracy (``mc_acc``)
    scored with the retrieval (ITM) head, as the original's MSRVTT-MC protocol."""
    was_training = model.training
    model.eval()
    try:
        metrics: dict[str, float] = {}
        if cfg.data.task == "retrieval":
            video_ids, captions, gt = retrieval_eval_lists(rows)
            scores, itc = retrieval_scores(model, cfg, video_ids, captions, device)
            metrics.update(retrieval_metrics(scores, gt))
            if itc is not None:
                metrics.update({f"itc_{k}": v for k, v in retrieval_metrics(itc, gt).items()})
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
