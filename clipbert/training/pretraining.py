"""Image-text pretraining, as the original's ``ClipBertForPreTraining``: masked language modelling + image-text matching.

Data: caption files in the original's COCO / VG formats (clipbert.data.annotations ``coco_captions`` / ``vg_captions``: one
``{"coco_id" | "vg_id", "caption"}`` per line); the images live in the frame store as 1-frame videos, so an image
is a 1-frame clip. ``group_captions`` turns the captions into rows of ``data.caption_group_size`` captions of one
image, which share one CNN pass (the original's ``mk_input_group``, group size 2).

Per training step (``make_pretrain_batch``, in the Ray Data stage like ``batches.make_batch``): each caption is
replaced with probability ``data.itm_neg_probability`` by a caption of another image (ITM label 0, else 1); the
matched captions get MLM masking (``mask_tokens``: ``data.mlm_probability`` of their word pieces; of those 80%
become [MASK], 10% a random token, 10% stay). The model drops a random subset of each image's visual tokens in
training (``model.pixel_random_sampling_size``). Loss (``pretrain_loss``): MLM cross-entropy averaged over the
masked tokens + 2-way ITM cross-entropy averaged over the captions; with contrastive heads (``model.contrastive``,
which the finetuning presets use for the retrieval index), also the in-batch InfoNCE between each image and its
first caption (unmasked), weighted by ``optim.itc_weight``: beyond the original, as in finetuning.

Two choices the original leaves open or makes differently: MLM is applied to matched captions only (a mismatched
caption tells nothing about its image), and its mean is over the masked tokens (the original averages over every
text position, counting the unmasked ones as 0, which only rescales the loss).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipbert.data.batches import draw_negatives, video_key
from clipbert.data.clips import open_store, video_clips
from clipbert.config import Config, config_from_dict, config_to_dict
from clipbert.data.annotations import Row
from clipbert.model.losses import consensus, contrastive_loss, itm_loss
from clipbert.model.scoring import autocast
from clipbert.data.text import cached_tokenizer, tokenize

IGNORE = -1  # mlm_labels value of a position that is not predicted
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the masked positions: [MASK], a random token; the rest stay unchanged
METRICS = ("itm_acc", "mlm_acc", "itm_loss", "mlm_loss")  # evaluate_pretrain's keys (accuracies in percent)


def group_captions(rows: Sequence[Row], size: int, rng: np.random.Generator | None = None) -> list[Row]:
    """Rows of single captions -> rows of ``size`` captions of one image, each image's captions in file order.

    With ``rng`` (training) a short last group is filled with captions of the same image redrawn at random, as the
    original pads its groups; without it the group stays short. ``example_id`` is renumbered 0..n-1.
    """
    by_image: dict[str, list[str]] = {}
    for r in rows:
        by_image.setdefault(r["video_id"], []).extend(r["texts"])
    out: list[Row] = []
    for image_id, captions in by_image.items():
        for start in range(0, len(captions), size):
            group = captions[start:start + size]
            if rng is not None and len(group) < size:
                group += [captions[j] for j in rng.integers(len(captions), size=size - len(group))]
            out.append(Row(example_id=len(out), video_id=image_id, texts=group, label=1, answer_type="", answer=""))
    return out


def mask_tokens(input_ids: np.ndarray, attention_mask: np.ndarray, rng: np.random.Generator, probability: float,
                mask_id: int, vocab_size: int, special_ids: Sequence[int],
                rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BERT's MLM corruption of token ids (M, L): each real, non-special token of the selected rows is picked with
    ``probability``; a picked token becomes ``mask_id`` (80%), a uniformly random id (10%) or stays (10%).

    Args:
        rows: (M,) bool, the texts to mask (default: all).

    Returns:
        (corrupted ids (M, L), labels (M, L): the original id at picked positions, IGNORE elsewhere).
    """
    shape = input_ids.shape
    candidates = attention_mask.astype(bool) & ~np.isin(input_ids, list(special_ids))  # (M, L)
    if rows is not None:
        candidates &= rows[:, None]
    picked = candidates & (rng.random(shape) < probability)  # (M, L)
    labels = np.where(picked, input_ids, IGNORE)
    u = rng.random(shape)
    ids = input_ids.copy()
    ids[picked & (u < MASK_SHARE)] = mask_id
    randomised = picked & (u >= MASK_SHARE) & (u < MASK_SHARE + RANDOM_SHARE)
    ids[randomised] = rng.integers(vocab_size, size=int(randomised.sum()))
    return ids, labels


def make_pretrain_batch(
    batch: dict[str, Any],
    *,
    cfg: dict,
    train: bool,
    negatives: tuple[np.ndarray, np.ndarray],
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """Map caption-group rows (columns ``example_id, video_id, texts``) to a pretraining batch.

    Args:
        batch: a column batch of rows from ``group_captions`` (all with the same number K of captions).
        cfg: the Config as a dict (config_to_dict), as Ray ships it.
        train: a random frame of a multi-frame "image" when True (stills have one), the middle one when False.
        negatives: (image ids, captions) of the pool that mismatched captions are drawn from.
        seed: seed of the draws (negatives, masks, frames); None draws fresh entropy (new ones every epoch).

    Returns:
        "frames" uint8 (B, 1, T, 3, S, S), "input_ids" / "attention_mask" int64 (B, K, L) with MLM corruption,
        "itm_labels" int64 (B, K) (1 = the caption describes the image), "mlm_labels" int64 (B, K, L) (IGNORE where
        not predicted), "caption_ids" / "caption_mask" int64 (B, L) (the row's first caption, unmasked: what the
        contrastive loss embeds), "label" int64 (B,) zeros, "example_id" int64 (B,), "video_key" int64 (B,).
    """
    c = config_from_dict(cfg)
    store, tok = open_store(c.data.frame_store), cached_tokenizer(c.data.tokenizer)
    rng = np.random.default_rng(seed if seed is not None else int.from_bytes(os.urandom(8), "little"))
    image_ids = [str(v) for v in batch["video_id"]]
    texts = [list(t) for t in batch["texts"]]
    k = len(texts[0])
    if any(len(t) != k for t in texts):
        raise ValueError(f"rows of one batch must have the same number of captions, got {sorted({len(t) for t in texts})}")
    matched = rng.random((len(texts), k)) >= c.data.itm_neg_probability  # (B, K)
    others = draw_negatives(image_ids, negatives[0], negatives[1], k, rng)  # (B, K) captions of other images
    texts = [[t if matched[i, j] else others[i][j] for j, t in enumerate(row)] for i, row in enumerate(texts)]
    frames = np.stack([video_clips(store, v, c, train=train, rng=rng) for v in image_ids])  # (B, 1, T, 3, S, S)
    enc = tokenize(tok, [s for row in texts for s in row], c.data.max_txt_len)  # (B*K, L)
    ids, mlm_labels = mask_tokens(enc["input_ids"], enc["attention_mask"], rng, c.data.mlm_probability,
                                  tok.mask_token_id, len(tok), tok.all_special_ids, matched.reshape(-1))
    shape = (len(texts), k, c.data.max_txt_len)
    first = tokenize(tok, [row[0] for row in batch["texts"]], c.data.max_txt_len)  # (B, L): each image's own caption
    return {
        "frames": frames,
        "input_ids": ids.reshape(shape),
        "attention_mask": enc["attention_mask"].reshape(shape),
        "itm_labels": matched.astype(np.int64),
        "mlm_labels": mlm_labels.reshape(shape),
        "caption_ids": first["input_ids"],
        "caption_mask": first["attention_mask"],
        "label": np.zeros(len(texts), dtype=np.int64),
        "example_id": np.asarray(batch["example_id"], dtype=np.int64),
        "video_key": np.asarray([video_key(v) for v in image_ids], dtype=np.int64),
    }


def pretrain_outputs(model, batch: dict[str, torch.Tensor], contrastive: bool = False):
    """(PretrainOutput, MLM target ids (P,)) of a pretraining batch; ``model`` may be DDP-wrapped (the call goes
    through its forward); ``contrastive`` also embeds each image and its caption."""
    labels = batch["mlm_labels"]  # (B, K, L)
    out = model(batch["frames"], batch["input_ids"], batch["attention_mask"], mlm_mask=labels != IGNORE,
                return_embeddings=contrastive, embed_text=(batch["caption_ids"], batch["caption_mask"]))
    n = out.itm_logits.shape[2]
    targets = labels[:, :, None, :].expand(-1, -1, n, -1)  # (B, K, N, L): one copy per clip, as the logits
    return out, targets[targets != IGNORE]


def pretrain_loss(model, cfg: Config, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """MLM cross-entropy (mean over the masked tokens; 0 when none is masked) + ITM cross-entropy (mean), plus the
    weighted in-batch InfoNCE between images and their captions when the model has contrastive heads."""
    out, targets = pretrain_outputs(model, batch, cfg.model.contrastive)
    mlm = F.cross_entropy(out.mlm_logits.float(), targets) if targets.numel() else out.mlm_logits.sum() * 0.0
    loss = mlm + itm_loss(out.itm_logits, batch["itm_labels"], "mean")
    if cfg.model.contrastive:
        loss = loss + cfg.optim.itc_weight * contrastive_loss(out.video_embeds, out.text_embeds, out.logit_scale)
    return loss


@torch.no_grad()
def evaluate_pretrain(model, cfg: Config, rows: Sequence[Row], device: torch.device) -> dict[str, float]:
    """ITM accuracy and loss over held-out captions (half of them mismatched, drawn from the other held-out images)
    and MLM accuracy and loss over their masked tokens; the draws are seeded, so every evaluation sees the same
    pairs and masks. Accuracies in percent."""
    cfg_dict = config_to_dict(cfg)
    pool = (np.array([r["video_id"] for r in rows]), np.array([r["texts"][0] for r in rows]))
    singles = [Row(**{**r, "texts": [t]}) for r in rows for t in r["texts"]]  # one caption per row
    step = max(1, cfg.optim.batch_size)
    sums = dict.fromkeys(("itm_right", "itm_loss", "itm_n", "mlm_right", "mlm_loss", "mlm_n"), 0.0)
    for i, start in enumerate(range(0, len(singles), step)):
        chunk = singles[start:start + step]
        columns = {key: [r[key] for r in chunk] for key in ("example_id", "video_id", "texts")}
        batch = make_pretrain_batch(columns, cfg=cfg_dict, train=False, negatives=pool, seed=i)
        batch = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
        with autocast(device, cfg.train.precision):
            out, targets = pretrain_outputs(model, batch)
        mlm_logits = out.mlm_logits
        itm = consensus(out.itm_logits.float(), "mean").reshape(-1, 2)  # (B*K, 2)
        itm_labels = batch["itm_labels"].reshape(-1)
        sums["itm_right"] += float((itm.argmax(-1) == itm_labels).sum())
        sums["itm_loss"] += float(F.cross_entropy(itm, itm_labels, reduction="sum"))
        sums["itm_n"] += itm_labels.numel()
        if targets.numel():
            sums["mlm_right"] += float((mlm_logits.argmax(-1) == targets).sum())
            sums["mlm_loss"] += float(F.cross_entropy(mlm_logits.float(), targets, reduction="sum"))
            sums["mlm_n"] += targets.numel()
    mlm_n, itm_n = max(sums["mlm_n"], 1.0), max(sums["itm_n"], 1.0)
    return {"itm_acc": 100.0 * sums["itm_right"] / itm_n, "mlm_acc": 100.0 * sums["mlm_right"] / mlm_n,
            "itm_loss": sums["itm_loss"] / itm_n, "mlm_loss": sums["mlm_loss"] / mlm_n}
