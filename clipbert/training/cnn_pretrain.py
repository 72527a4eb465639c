"""Supervised pretraining of the CNN on a synthesized corpus: our stand-in for ClipBERT's ImageNet init.

ClipBERT never trains its CNN from random weights: the trunk comes from an ImageNet-pretrained grid-feature
ResNet. Trained from random weights on the synthetic corpus, the retrieval losses learn colour within minutes
but barely move shape and direction in 20 (bench/learn.py): a random trunk's features tell colour apart
and nothing else, and a contrastive loss keeps fitting the easy feature. This module gives the tiny model
its "ImageNet": it classifies the event seen in one clip (colour, shape and direction, three softmax heads
on the max-pooled grid) on a corpus synthesized with ANOTHER seed, so none of its videos is in the
retrieval splits, and saves the CNN (ResNet trunk and grid encoder) as a weights directory that
``model.init_checkpoint`` loads; the transformer still starts from random weights. The grid encoder is
saved too because a pretrained trunk under a random grid encoder learned no faster than a random CNN.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from clipbert.model.checkpoint import WEIGHTS_NAME
from clipbert.data.clips import stored_frames
from clipbert.config import ModelConfig
from clipbert.data.frames import FrameStore
from clipbert.model.clipbert import GridFeatBackbone
from clipbert.synthetic.vocabulary import ATTRIBUTES

logger = logging.getLogger(__name__)

ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)  # ("color", "shape", "direction")


@dataclass(frozen=True)
class ClipLabel:
    """One training example: T frame indices of the frame store, inside one event, and its attribute labels."""

    video_id: str
    frame_indices: tuple[int, ...]  # (T,) indices into the stored (resampled) frames
    labels: tuple[int, ...]  # one class index per ATTRIBUTE_NAMES entry


def event_store_ranges(video: dict, n_stored: int, stored_fps: float) -> list[tuple[int, int]]:
    """[lo, hi] (inclusive) stored-frame indices whose time lies inside each event, from corpus.json metadata.

    corpus.json gives event ranges in source frames at the video's own fps; the store resampled the video
    to ``stored_fps``. A stored frame i shows source time i / stored_fps.
    """
    ranges = []
    for start, end in video["event_frames"]:
        lo = math.ceil(start / video["fps"] * stored_fps)
        hi = min(n_stored - 1, math.ceil(end / video["fps"] * stored_fps) - 1)
        ranges.append((lo, hi))
    return ranges


def sample_clip(video: dict, n_stored: int, stored_fps: float, frames_per_clip: int,
                rng: np.random.Generator) -> ClipLabel | None:
    """A random event of the video and T frames spread over a random 1-second window inside it (None if the
    event has no stored frame)."""
    event = int(rng.integers(len(video["events"])))
    lo, hi = event_store_ranges(video, n_stored, stored_fps)[event]
    if hi < lo:
        return None
    span = min(hi - lo + 1, max(1, round(stored_fps)))  # frames in a 1-second window
    start = lo + int(rng.integers(hi - lo + 2 - span))
    indices = np.linspace(start, start + span - 1, frames_per_clip).round().astype(int)  # (T,)
    attrs = video["events"][event]
    labels = tuple(ATTRIBUTES[name].index(attrs[name]) for name in ATTRIBUTE_NAMES)
    return ClipLabel(video["video_id"], tuple(int(i) for i in indices), labels)


class AttributeClassifier(nn.Module):
    """GridFeatBackbone + one linear head per attribute on the T-mean, spatially max-pooled grid."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cnn = GridFeatBackbone(cfg)
        self.heads = nn.ModuleList(nn.Linear(cfg.hidden_size, len(ATTRIBUTES[n])) for n in ATTRIBUTE_NAMES)

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """frames (B, T, 3, S, S) RGB 0-255 -> one (B, n_values) logit tensor per attribute."""
        b, t = frames.shape[:2]
        grid = self.cnn(frames.flatten(0, 1))  # (B*T, D, h, w)
        pooled = grid.view(b, t, *grid.shape[1:]).mean(1).amax(dim=(2, 3))  # (B, D)
        return [head(pooled) for head in self.heads]


def _frames(store: FrameStore, clips: Sequence[ClipLabel], img_size: int) -> torch.Tensor:
    return torch.stack([stored_frames(store, c.video_id, c.frame_indices, img_size) for c in clips])  # (B, T, 3, S, S)


def _labels(clips: Sequence[ClipLabel]) -> torch.Tensor:
    return torch.tensor([c.labels for c in clips], dtype=torch.long)  # (B, n_attributes)


def _draw(videos: Sequence[dict], store: FrameStore, n: int, frames_per_clip: int,
          rng: np.random.Generator) -> list[ClipLabel]:
    clips: list[ClipLabel] = []
    while len(clips) < n:
        v = videos[int(rng.integers(len(videos)))]
        clip = sample_clip(v, store.n_stored(v["video_id"]), store.stored_fps(v["video_id"]), frames_per_clip, rng)
        if clip is not None:
            clips.append(clip)
    return clips


@torch.no_grad()
def accuracy(model: AttributeClassifier, frames: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 64) -> dict[str, float]:
    """Per-attribute accuracy in percent of clips (B, T, 3, S, S) against labels (B, n_attributes)."""
    was_training = model.training
    model.eval()
    preds = [torch.stack([lg.argmax(1) for lg in model(frames[i:i + batch_size])], 1)
             for i in range(0, len(frames), batch_size)]
    model.train(was_training)
    hits = (torch.cat(preds) == labels).float().mean(0) * 100  # (n_attributes,)
    return {name: float(h) for name, h in zip(ATTRIBUTE_NAMES, hits)}


def load_corpus_videos(corpus_dir: str | Path, store: FrameStore) -> dict[str, list[dict]]:
    """corpus.json videos by split, keeping those in the frame store (the others are counted and logged)."""
    videos = json.loads((Path(corpus_dir) / "corpus.json").read_text())["videos"]
    kept = [v for v in videos if v["video_id"] in store]
    if len(kept) < len(videos):
        missing = [v["video_id"] for v in videos if v["video_id"] not in store]
        logger.warning("%d of %d corpus videos are not in the frame store (first: %s)", len(missing), len(videos),
                       ", ".join(missing[:5]))
    by_split: dict[str, list[dict]] = {}
    for v in kept:
        by_split.setdefault(v["split"], []).append(v)
    if not by_split.get("train"):
        raise ValueError(f"no train video of {corpus_dir} is in the frame store {store.root}")
    return by_split


def pretrain_cnn(cfg: ModelConfig, corpus_dir: str | Path, frame_store: str | Path, out_dir: str | Path, *,
                 minutes: float = 2.0, max_steps: int = 0, batch_size: int = 32, lr: float = 1e-3,
                 frames_per_clip: int = 2, seed: int = 0, eval_clips: int = 256, log_every: int = 50) -> dict:
    """Train AttributeClassifier on the corpus's train videos for `minutes` (or `max_steps` when > 0), then save
    its CNN to `out_dir`: ``model.safetensors`` (ClipBert key names, ``cnn.*``) and ``pretrain_metrics.json``.

    Returns the metrics: steps, seconds, and the per-attribute accuracy on held-out clips (the corpus's val
    split, or fresh train clips when it has none) before and after.
    """
    store = FrameStore(frame_store)
    videos = load_corpus_videos(corpus_dir, store)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = AttributeClassifier(cfg)
    held_out_split = "val" if videos.get("val") else "train"
    held_out = _draw(videos[held_out_split], store, eval_clips, frames_per_clip, np.random.default_rng(seed + 1))
    eval_frames, eval_labels = _frames(store, held_out, cfg.img_size), _labels(held_out)
    before = accuracy(model, eval_frames, eval_labels)

    def batch_loss() -> torch.Tensor:
        clips = _draw(videos["train"], store, batch_size, frames_per_clip, rng)
        labels = _labels(clips)
        return sum(F.cross_entropy(lg, labels[:, k]) for k, lg in enumerate(model(_frames(store, clips, cfg.img_size))))

    run = train_steps(model, batch_loss, lr=lr, minutes=minutes, max_steps=max_steps, log_every=log_every,
                      what="pretrain")
    after = accuracy(model, eval_frames, eval_labels)
    metrics = {**run, "held_out_split": held_out_split, "accuracy_before": before, "accuracy_after": after,
               "corpus": str(corpus_dir)}
    out = save_cnn(model.cnn, out_dir, metrics)
    logger.info("pretrained the CNN for %d steps (%.0f s): held-out accuracy %s -> %s; saved to %s",
                run["steps"], run["seconds"], _fmt(before), _fmt(after), out)
    return metrics


def train_steps(model: nn.Module, batch_loss: Callable[[], torch.Tensor], *, lr: float, minutes: float,
                max_steps: int = 0, log_every: int = 50, what: str = "pretrain") -> dict:
    """AdamW (weight decay 1e-3) on ``batch_loss()`` for `minutes` of wall time, or `max_steps` steps when > 0,
    logging the mean loss every `log_every` steps; returns {"steps", "seconds", "final_loss"}."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-3)
    model.train()
    t0, step, losses = time.time(), 0, []
    while (step < max_steps) if max_steps > 0 else (time.time() - t0 < 60 * minutes):
        loss = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % log_every == 0:
            logger.info("%s step %d loss %.3f (%.0f s)", what, step, np.mean(losses[-log_every:]), time.time() - t0)
    return {"steps": step, "seconds": time.time() - t0,
            "final_loss": float(np.mean(losses[-log_every:])) if losses else None}


def save_cnn(cnn: GridFeatBackbone, out_dir: str | Path, metrics: dict) -> Path:
    """Write a pretrained CNN as ``model.init_checkpoint`` reads it: ``model.safetensors`` (ResNet trunk and grid
    encoder under ClipBert key names, ``cnn.*``) and ``pretrain_metrics.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({f"cnn.{k}": v.contiguous() for k, v in cnn.state_dict().items()}, str(out / WEIGHTS_NAME))
    (out / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


def _fmt(acc: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.0f}%" for k, v in acc.items())
