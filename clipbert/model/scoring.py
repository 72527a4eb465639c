"""Scoring (text, video) pairs: dual-encoder embeddings and similarities, cross-encoder scores with clip consensus.

Both evaluation (all pairs, the original's protocol) and search (re-ranking FAISS candidates) score through
these functions. A cross-encoder score is the ITM margin ``consensus(logits)[1] - consensus(logits)[0]`` over the
N dense clips of the video (it ranks as the original's ``softmax(consensus(logits))[1]`` but never saturates into
ties); a fused score adds the dual-encoder similarity times a weight chosen on validation (``fuse``); a
dual-encoder similarity is the inner product of L2-normalised embeddings.
The CNN runs once per video: clip grids are computed in video chunks and reused by every text scored on them.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterator, Sequence

import numpy as np
import torch

from clipbert.data.clips import video_batch
from clipbert.config import Config
from clipbert.model.losses import itm_margins
from clipbert.model.clipbert import ClipBert, aggregate_clip_embeddings
from clipbert.data.text import cached_tokenizer, tokenize


def autocast(device: torch.device, precision: str):
    """torch.autocast for "bf16"/"fp16" on the device's type; a no-op for "fp32"."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def chunks(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` covering range(n)."""
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def tokenize_texts(cfg: Config, texts: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids, attention_mask), each int64 (M, L) on `device` (L = data.max_txt_len)."""
    enc = tokenize(cached_tokenizer(cfg.data.tokenizer), texts, cfg.data.max_txt_len, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


FUSE_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)  # tried on val


def fuse(cross: np.ndarray, itc: np.ndarray, weight: float) -> np.ndarray:
    """The re-rank score: ITM margin + weight * dual-encoder cosine similarity (BLIP ranks by ITM + ITC)."""
    return np.asarray(cross, dtype=np.float32) + np.float32(weight) * np.asarray(itc, dtype=np.float32)


@torch.no_grad()
def video_grids(model: ClipBert, cfg: Config, video_ids: Sequence[str], device: torch.device, *,
                n_clips: int | None = None, batch_size: int = 8) -> Iterator[tuple[slice, torch.Tensor]]:
    """Clip grids of videos in chunks: yields (slice of video_ids, grids (b, N, h, w, D)) with N dense clips."""
    for vs in chunks(len(video_ids), batch_size):
        frames = torch.from_numpy(video_batch(video_ids[vs], cfg, n_clips=n_clips)).to(device)  # (b, N, T, 3, S, S)
        with autocast(device, cfg.train.precision):
            yield vs, model.encode_grid(frames)


@torch.no_grad()
def text_embeddings(model: ClipBert, ids: torch.Tensor, mask: torch.Tensor, precision: str,
                    batch_size: int = 256) -> torch.Tensor:
    """Tokenised texts (M, L) -> L2-normalised float32 embeddings (M, E) (needs contrastive heads)."""
    with autocast(ids.device, precision):
        return torch.cat([model.encode_text(ids[s], mask[s]).float() for s in chunks(len(ids), batch_size)])


@torch.no_grad()
def clip_embeddings(model: ClipBert, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grids (b, N, h, w, D) -> float32 clip embeddings (b, N, E) and their normalised mean (b, E)."""
    clips = model.embed_grid(grid).float()  # (b, N, E)
    return clips, aggregate_clip_embeddings(clips)


@torch.no_grad()
def cross_scores(model: ClipBert, grid: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, consensus: str,
                 *, text_batch_size: int = 64) -> torch.Tensor:
    """Every text against every video of a grid chunk: grids (b, N, h, w, D) x texts (M, L) -> scores (M, b)."""
    b, out = grid.shape[0], []
    for ts in chunks(len(ids), text_batch_size):
        k = ts.stop - ts.start
        logits = model.score_grid(grid, ids[ts].expand(b, k, -1), mask[ts].expand(b, k, -1))  # (b, k, N, 2)
        out.append(itm_margins(logits, consensus).float().t())  # (k, b)
    return torch.cat(out)  # (M, b)


@torch.no_grad()
def pair_scores(model: ClipBert, cfg: Config, texts: Sequence[str], video_ids: Sequence[str], pairs: np.ndarray,
                device: torch.device, *, n_clips: int | None = None, video_batch_size: int = 8,
                pair_batch_size: int = 128) -> np.ndarray:
    """Cross-encoder scores of given (text, video) candidate pairs, N dense clips per video and clip consensus.

    Args:
        texts: the M texts the pairs index.
        video_ids: the V videos the pairs index.
        pairs: int (P, 2) rows of (text index, video index).
        n_clips: N dense clips per video (default ``sampling.inference_n_clips``).

    Returns:
        float32 (P,) ITM margins; each video's CNN runs once, whatever number of pairs it is in.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    scores = np.zeros(len(pairs), dtype=np.float32)
    ids, mask = tokenize_texts(cfg, texts, device)  # (M, L)
    wanted = np.unique(pairs[:, 1])  # videos in at least one pair
    for vs, grid in video_grids(model, cfg, [video_ids[i] for i in wanted], device, n_clips=n_clips,
                                batch_size=video_batch_size):
        local = {int(v): j for j, v in enumerate(wanted[vs])}  # video index -> row of this grid chunk
        rows = np.flatnonzero(np.isin(pairs[:, 1], wanted[vs]))  # pairs on these videos
        for ps in chunks(len(rows), pair_batch_size):
            r = rows[ps]
            g = grid[[local[int(v)] for v in pairs[r, 1]]]  # (p, N, h, w, D)
            t = torch.from_numpy(pairs[r, 0]).to(device)
            with autocast(device, cfg.train.precision):
                logits = model.score_grid(g, ids[t][:, None], mask[t][:, None])  # (p, 1, N, 2)
            scores[r] = itm_margins(logits, cfg.model.consensus)[:, 0].float().cpu().numpy()
    return scores
