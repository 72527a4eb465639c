"""Caption-word pretraining of the CNN: each image predicts the words of its captions (captions only, no labels).

Image-text pretraining (clipbert.training.pretraining: MLM + ITM) trains the CNN only through the cross-encoder. From random
weights that signal teaches the tiny CNN colour within minutes but not shape: a linear probe of its grid tells the
synthetic shapes apart no better than at initialisation (bench/learn.py). This module gives the CNN a direct,
weakly supervised signal first: a linear layer on the spatially max-pooled grid predicts the bag of words of the
image's captions (cross-entropy against the distinct words of all its captions, uniformly weighted), as in
Joulin et al. 2016, "Learning Visual Features from Large Weakly Supervised Data". The max keeps a shape that fills
a few grid cells whole, where a mean would dilute it.

The data are image-text pretraining's own: the caption files of a pretraining Config (COCO / VG caption jsonl) and
its frame store of 1-frame images. The CNN (ResNet trunk and grid encoder) is saved under ClipBert key names, so
``model.init_checkpoint`` starts image-text pretraining (or finetuning) from it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from clipbert.data.clips import open_store, stored_frames
from clipbert.training.cnn_pretrain import save_cnn, train_steps
from clipbert.config import Config, ModelConfig
from clipbert.data.annotations import load_annotations
from clipbert.model.clipbert import GridFeatBackbone
from clipbert.data.text import cached_tokenizer

logger = logging.getLogger(__name__)


class CaptionWordModel(nn.Module):
    """GridFeatBackbone + a linear word layer on the spatially max-pooled grid of one frame."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cnn = GridFeatBackbone(cfg)
        self.words = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, S, S) RGB 0-255 -> word logits (B, vocab)."""
        return self.words(self.cnn(frames).amax(dim=(2, 3)))  # (B, D) -> (B, vocab)


def caption_words(rows: Sequence[dict], tokenizer) -> dict[str, list[int]]:
    """image id -> the sorted distinct word-piece ids of all its captions (special tokens left out)."""
    special = set(tokenizer.all_special_ids)
    words: dict[str, set[int]] = {}
    for row in rows:
        for text in row["texts"]:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            words.setdefault(row["video_id"], set()).update(i for i in ids if i not in special)
    return {image: sorted(ids) for image, ids in words.items() if ids}


def word_targets(word_lists: Sequence[list[int]], vocab_size: int) -> torch.Tensor:
    """(B, vocab) target distributions: uniform over each image's words."""
    target = torch.zeros(len(word_lists), vocab_size)
    for i, ids in enumerate(word_lists):
        target[i, ids] = 1.0 / len(ids)
    return target


def word_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of word logits (B, vocab) against target distributions (B, vocab), mean over images."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(1).mean()


def word_recall(logits: torch.Tensor, word_lists: Sequence[list[int]]) -> float:
    """Percent of each image's caption words found among its top-|words| word logits (B, vocab), averaged over
    images."""
    hits = [len(set(logits[i].topk(len(ids)).indices.tolist()) & set(ids)) / len(ids)
            for i, ids in enumerate(word_lists)]
    return 100.0 * float(np.mean(hits))


def _images(cfg: Config, path: str, known: set[str]) -> dict[str, list[int]]:
    rows, report = load_annotations(path, known_video_ids=known)
    if report.skipped:
        logger.warning("%s", report.summary())
    return caption_words(rows, cached_tokenizer(cfg.data.tokenizer))


def pretrain_cnn_on_captions(cfg: Config, out_dir: str | Path, *, minutes: float = 2.5, max_steps: int = 0,
                             batch_size: int = 32, lr: float = 1e-3, seed: int = 0, log_every: int = 50) -> dict:
    """Train CaptionWordModel on the images of ``cfg.data.train_file`` for `minutes` (or `max_steps` when > 0),
    then save its CNN to `out_dir` (``model.safetensors`` with ``cnn.*`` keys, ``pretrain_metrics.json``).

    Returns the metrics: steps, seconds, and the held-out word recall and loss (images of ``cfg.data.val_file``)
    before and after.
    """
    store = open_store(cfg.data.frame_store)
    known = set(store.ids())
    train = _images(cfg, cfg.data.train_file, known)
    held_out = _images(cfg, cfg.data.val_file, known)
    if len(train) < 2:
        raise ValueError(f"{cfg.data.train_file}: captions of at least two stored images are needed")
    size = cfg.model.img_size

    def frames(ids: Sequence[str]) -> torch.Tensor:
        return torch.stack([stored_frames(store, i, [0], size)[0] for i in ids])  # (B, 3, S, S) uint8

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = CaptionWordModel(cfg.model)
    eval_ids = sorted(held_out)
    eval_frames, eval_words = frames(eval_ids), [held_out[i] for i in eval_ids]
    eval_target = word_targets(eval_words, cfg.model.vocab_size)

    @torch.no_grad()
    def held_out_metrics() -> dict[str, float]:
        logits = torch.cat([model(eval_frames[i:i + 64].float()) for i in range(0, len(eval_frames), 64)])
        return {"word_recall": word_recall(logits, eval_words), "word_loss": float(word_loss(logits, eval_target))}

    before = held_out_metrics()
    train_ids = sorted(train)

    def batch_loss() -> torch.Tensor:
        batch = [train_ids[k] for k in rng.choice(len(train_ids), min(batch_size, len(train_ids)), replace=False)]
        return word_loss(model(frames(batch).float()), word_targets([train[i] for i in batch], cfg.model.vocab_size))

    run = train_steps(model, batch_loss, lr=lr, minutes=minutes, max_steps=max_steps, log_every=log_every,
                      what="caption-word")
    metrics = {**run, "held_out_before": before, "held_out_after": held_out_metrics(),
               "train_file": cfg.data.train_file, "images": len(train_ids), "held_out_images": len(eval_ids)}
    save_cnn(model.cnn, out_dir, metrics)
    logger.info("caption-word pretraining: %d steps (%.0f s), held-out word recall %.1f%% -> %.1f%%; saved to %s",
                run["steps"], run["seconds"], before["word_recall"], metrics["held_out_after"]["word_recall"], out_dir)
    return metrics
