"""CPU stage of the training data path: annotation rows -> sampled clips (clipbert.data.clips) and tokenised texts.

``make_batch`` runs inside Ray Data ``map_batches`` tasks (and directly in tests). A batch is a dict of
numpy arrays with fixed keys:

    "frames"          uint8 (B, N, T, 3, S, S)  RGB clips, longer side resized to S, zero-padded right/bottom
    "input_ids"       int64 (B, K, L)           K texts per video ([CLS] ... [SEP] [PAD]...)
    "attention_mask"  int64 (B, K, L)
    "label"           int64 (B,)                retrieval: index of the positive text (0); mc: the answer
                                                option; qa: the answer label (-1 = not in the vocabulary)
    "example_id"      int64 (B,)
    "video_key"       int64 (B,)                a stable hash of the video id (rows of the same video share it)

Training draws fresh random clips (and, for retrieval, fresh negative captions: of other videos, and with
``data.itm_swap_negatives`` one-word swaps of the positive) every time a row passes through; inference takes N
uniform clips (``sampling.inference_n_clips``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

import numpy as np

from clipbert.data.caption_swaps import SwapTable, build_swap_table, swap_negatives
from clipbert.data.clips import open_store, video_clips
from clipbert.config import config_from_dict
from clipbert.data.text import cached_tokenizer, tokenize

BATCH_KEYS = ("frames", "input_ids", "attention_mask", "label", "example_id", "video_key")


def video_key(video_id: str) -> int:
    """A stable signed 64-bit hash of a video id (the same in every process, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(video_id.encode(), digest_size=8).digest(), "little", signed=True)


def draw_negatives(
    video_ids: Sequence[str], pool_videos: np.ndarray, pool_captions: np.ndarray, k: int, rng: np.random.Generator
) -> list[list[str]]:
    """For each video, k captions drawn uniformly from pool rows of OTHER videos (the original's ITM negatives)."""
    out = []
    for vid in video_ids:
        picks: list[str] = []
        while len(picks) < k:
            j = rng.integers(len(pool_videos), size=4 * k)
            picks += [pool_captions[i] for i in j if pool_videos[i] != vid][: k - len(picks)]
        out.append(picks)
    return out


_SWAP_POOLS: dict[bytes, tuple[SwapTable, dict[str, frozenset[str]]]] = {}  # per process: the pool is the same


def _swap_pool(pool_videos: np.ndarray, pool_captions: np.ndarray) -> tuple[SwapTable, dict[str, frozenset[str]]]:
    """The swap table of the pool's captions and each video's own captions (lower case), built once per process."""
    key = hashlib.blake2b("\n".join(pool_videos.tolist() + pool_captions.tolist()).encode(), digest_size=16).digest()
    if key not in _SWAP_POOLS:
        own: dict[str, set[str]] = {}
        for v, t in zip(pool_videos.tolist(), pool_captions.tolist()):
            own.setdefault(v, set()).add(t.lower())
        _SWAP_POOLS.clear()  # one training pool at a time
        _SWAP_POOLS[key] = (build_swap_table(pool_captions.tolist()), {v: frozenset(c) for v, c in own.items()})
    return _SWAP_POOLS[key]


def draw_swaps(video_ids: Sequence[str], positives: Sequence[str], pool_videos: np.ndarray,
               pool_captions: np.ndarray, k: int, rng: np.random.Generator) -> list[list[str]]:
    """For each video, k one-word swaps of its positive (clipbert.data.caption_swaps), interchangeable words learned from
    the pool's captions; a caption with fewer swappable words is topped up with random captions of other videos."""
    table, own = _swap_pool(pool_videos, pool_captions)
    out = []
    for vid, text in zip(video_ids, positives):
        swaps = swap_negatives(text, table, k, rng, own.get(vid, frozenset()))
        if len(swaps) < k:
            swaps += draw_negatives([vid], pool_videos, pool_captions, k - len(swaps), rng)[0]
        out.append(swaps)
    return out


def make_batch(
    batch: dict[str, Any],
    *,
    cfg: dict,
    train: bool,
    negatives: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """Map annotation rows (columns ``example_id, video_id, texts, label``) to a model batch (BATCH_KEYS).

    Args:
        batch: a column batch of annotation rows (clipbert.data.annotations row schema).
        cfg: the Config as a dict (config_to_dict), as Ray ships it.
        train: random clips (and retrieval negatives) when True, uniform inference clips when False.
        negatives: (video_ids, captions) of every training caption: the pool retrieval negatives come from;
            only used in training when ``data.task == "retrieval"``.
        seed: seed of the clip/negative draws; None draws fresh entropy (new clips every epoch).
    """
    c = config_from_dict(cfg)
    store, tok = open_store(c.data.frame_store), cached_tokenizer(c.data.tokenizer)
    rng = np.random.default_rng(seed if seed is not None else int.from_bytes(os.urandom(8), "little"))
    video_ids = [str(v) for v in batch["video_id"]]
    texts = [list(t) for t in batch["texts"]]
    labels = np.asarray(batch["label"], dtype=np.int64)
    if train and c.data.task == "retrieval" and negatives is not None:
        negs = draw_negatives(video_ids, negatives[0], negatives[1], c.data.itm_neg_size, rng)
        if c.data.itm_swap_negatives:
            swaps = draw_swaps(video_ids, [t[0] for t in texts], negatives[0], negatives[1],
                               c.data.itm_swap_negatives, rng)
            negs = [n + s for n, s in zip(negs, swaps)]
        texts = [t[:1] + n for t, n in zip(texts, negs)]
        labels = np.zeros(len(texts), dtype=np.int64)  # the positive is text 0
    frames = np.stack([video_clips(store, v, c, train=train, rng=rng) for v in video_ids])  # (B, N, T, 3, S, S)
    k = max(len(t) for t in texts)
    if any(len(t) != k for t in texts):
        raise ValueError(f"rows of one batch must have the same number of texts, got {sorted({len(t) for t in texts})}")
    enc = tokenize(tok, [s for t in texts for s in t], c.data.max_txt_len)  # (B*K, L)
    shape = (len(texts), k, c.data.max_txt_len)
    return {
        "frames": frames,
        "input_ids": enc["input_ids"].reshape(shape),  # (B, K, L)
        "attention_mask": enc["attention_mask"].reshape(shape),  # (B, K, L)
        "label": labels,
        "example_id": np.asarray(batch["example_id"], dtype=np.int64),
        "video_key": np.asarray([video_key(v) for v in video_ids], dtype=np.int64),
    }
