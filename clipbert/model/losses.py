"""Clip score consensus and the task losses (ITM, multiple choice, QA, InfoNCE) on per-clip logits.

Logit layout everywhere: (B, K, N, C) = videos x texts per video x clips x classes, as returned by
``ClipBert.forward``. Consensus always pools LOGITS over the clip axis, never probabilities (REFERENCE.md
section 2). With ``how="lse"`` the loss is cross-entropy on the LogSumExp-pooled logits, which equals the
original's ``logsumexp over (clips x classes) - logsumexp over clips of class y``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

CLIP_DIM = 2  # the N axis of (B, K, N, C) logits


def consensus(logits: torch.Tensor, how: str, dim: int = CLIP_DIM, scale: float = 1.0) -> torch.Tensor:
    """Pool logits over clips: "mean", "max" (element-wise, per class) or "lse"; removes `dim`.

    "lse" is LogSumExp at inverse temperature `scale`: logsumexp(scale * x) / scale, a soft maximum that
    approaches "max" as `scale` grows (scale 1: the plain LogSumExp of the original).
    """
    if how == "mean":
        return logits.mean(dim)
    if how == "max":
        return logits.amax(dim)
    if how == "lse":
        return torch.logsumexp(logits * scale, dim) / scale
    raise ValueError(f"consensus must be 'mean', 'max' or 'lse', got {how!r}")


def itm_labels(batch_size: int, num_texts: int, device: torch.device | None = None) -> torch.Tensor:
    """(B, K) ITM labels of a retrieval batch: text 0 of each video is its positive (1), the rest negatives (0)."""
    labels = torch.zeros(batch_size, num_texts, dtype=torch.long, device=device)
    labels[:, 0] = 1
    return labels


def itm_loss(logits: torch.Tensor, labels: torch.Tensor | None = None, how: str = "lse") -> torch.Tensor:
    """2-way CE averaged over the B*K (video, text) rows. logits (B, K, N, 2); labels (B, K) in {0, 1}."""
    if logits.shape[-1] != 2:
        raise ValueError(f"ITM logits need 2 classes, got shape {tuple(logits.shape)}")
    if labels is None:
        labels = itm_labels(logits.shape[0], logits.shape[1], logits.device)
    pooled = consensus(logits.float(), how)  # (B, K, 2)
    return F.cross_entropy(pooled.reshape(-1, 2), labels.reshape(-1))


def mc_loss(logits: torch.Tensor, labels: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """CE over the K options (one score each). logits (B, K, N, 1); labels (B,) = index of the right option."""
    if logits.shape[-1] != 1:
        raise ValueError(f"MC logits need 1 score per option, got shape {tuple(logits.shape)}")
    pooled = consensus(logits.float(), how).squeeze(-1)  # (B, K)
    return F.cross_entropy(pooled, labels.reshape(-1))


def qa_loss(logits: torch.Tensor, labels: torch.Tensor, how: str = "lse") -> torch.Tensor:
    """CE over the answer vocabulary. logits (B, 1, N, A); labels (B,) answer labels."""
    if logits.shape[1] != 1:
        raise ValueError(f"QA logits need K=1 text per video, got shape {tuple(logits.shape)}")
    pooled = consensus(logits.float(), how)[:, 0]  # (B, A)
    return F.cross_entropy(pooled, labels.reshape(-1))


def task_loss(head: str, logits: torch.Tensor, labels: torch.Tensor | None, how: str) -> torch.Tensor:
    """Dispatch to itm_loss / mc_loss / qa_loss by head name."""
    if head == "itm":
        return itm_loss(logits, labels, how)
    if head == "mc":
        return mc_loss(logits, labels, how)
    if head == "qa":
        return qa_loss(logits, labels, how)
    raise ValueError(f"unknown head {head!r}")


def itm_scores(logits: torch.Tensor, how: str = "lse") -> torch.Tensor:
    """(B, K, N, 2) -> (B, K) match probability softmax(consensus)[..., 1], the original's retrieval score."""
    return torch.softmax(consensus(logits.float(), how), dim=-1)[..., 1]


def itm_margins(logits: torch.Tensor, how: str = "lse") -> torch.Tensor:
    """(B, K, N, 2) -> (B, K) match margin: consensus logit of "match" minus "no match". It ranks as the match
    probability does, but never saturates into ties at 1.0: the re-rank score."""
    pooled = consensus(logits.float(), how)  # (B, K, 2)
    return pooled[..., 1] - pooled[..., 0]


def predict(head: str, logits: torch.Tensor, how: str) -> torch.Tensor:
    """Argmax predictions: (B,) chosen option for "mc" (and "itm" scoring K options), (B,) answer for "qa"."""
    if head == "qa":
        return consensus(logits.float(), how)[:, 0].argmax(-1)  # (B,)
    if head == "itm":
        return itm_margins(logits, how).argmax(-1)  # (B,)
    return consensus(logits.float(), how).squeeze(-1).argmax(-1)  # (B,)


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE between L2-normalised video (B, E) and text (B, E) embeddings.

    Row i of each is a matching pair; every other row of the batch is a negative (a batch holding the same
    video twice treats the copy as a negative). `logit_scale` is the multiplier (inverse temperature),
    e.g. ``ClipBert.logit_scale.exp()``.
    """
    logits = logit_scale * video.float() @ text.float().t()  # (B, B)
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
