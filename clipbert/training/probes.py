"""Probes of what a model encodes about the synthetic world's attributes (colour, shape, direction of each event).

- ``linear_probe``: what the CNN's grid encodes, read linearly from one clip per event (``event_clips``);
- ``word_grounding``: how well an image-text pretrained checkpoint predicts a masked attribute word of a held-out
  caption of a still, among that attribute's words.

Both read a synthesized corpus (clipbert.synthetic: videos and captioned stills) and its frame store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipbert.model.checkpoint import load_checkpoint
from clipbert.data.clips import open_store, stored_frames, video_clips
from clipbert.config import Config, load_config
from clipbert.data.annotations import load_annotations
from clipbert.model.clipbert import ClipBert
from clipbert.synthetic.corpus import load_corpus
from clipbert.synthetic.vocabulary import ATTRIBUTES
from clipbert.data.text import cached_tokenizer, tokenize

Labels = list[tuple[str, ...]]  # one (colour, shape, direction) per clip
EventClips = tuple[torch.Tensor, Labels]  # uint8 clips (M, 1, 2, 3, S, S) and their M labels


def event_clips(cfg: Config, split: str) -> EventClips:
    """One T=2 clip from the middle of each event of each video of the split: uint8 (M, 1, 2, 3, S, S), and each
    clip's (colour, shape, direction). An event fills half of its video, so its frames are at 15-35% or 65-85%."""
    store, clips, labels = open_store(cfg.data.frame_store), [], []
    for video in (v for v in load_corpus(cfg.data.root).videos if v.split == split):
        n = store.n_stored(video.video_id)
        for event, (a, b) in zip(video.events, ((0.15, 0.35), (0.65, 0.85))):
            clips.append(stored_frames(store, video.video_id, [int(a * n), int(b * n)], cfg.model.img_size))
            labels.append(event.key())
    return torch.stack(clips)[:, None], labels  # (M, 1, 2, 3, S, S)


def _pooled_grid(model: ClipBert, clips: torch.Tensor) -> torch.Tensor:
    """Clips (M, 1, T, 3, S, S) -> the CNN's spatially max-pooled clip grid (M, D), 64 clips per pass."""
    with torch.no_grad():
        grid = torch.cat([model.encode_grid(clips[i:i + 64]) for i in range(0, len(clips), 64)])  # (M, 1, h, w, D)
    return grid.amax(dim=(2, 3))[:, 0]  # (M, D)


def _probe_accuracy(train: torch.Tensor, y: torch.Tensor, test: torch.Tensor, y_test: torch.Tensor, classes: int,
                    weight_decay: float) -> float:
    """Multinomial logistic regression on features train (M, D) with labels y (M,), fit by L-BFGS; accuracy (%) on
    test (M', D) with labels y_test (M',)."""
    w = torch.zeros(train.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=300)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train @ w + b, y) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return 100.0 * float(((test @ w + b).argmax(1) == y_test).float().mean())


def linear_probe(model: ClipBert, train_clips: EventClips, test_clips: EventClips,
                 weight_decay: float = 1e-2) -> dict[str, float]:
    """What the CNN's grid encodes, read linearly: one multinomial logistic regression per attribute on the
    spatially max-pooled clip grid (D features, standardised), fit on the train videos' event clips (event_clips),
    accuracy (%) on the test videos' (chance: colour 17, shape and direction 25). One fixed weight decay: nothing
    is tuned on test."""
    model.eval()
    (train_x, train_labels), (test_x, test_labels) = train_clips, test_clips
    train, test = _pooled_grid(model, train_x), _pooled_grid(model, test_x)  # (M, D), (M', D)
    mean, std = train.mean(0), train.std(0) + 1e-5
    train, test = (train - mean) / std, (test - mean) / std
    out = {}
    for k, attribute in enumerate(ATTRIBUTES):
        values = list(ATTRIBUTES[attribute])
        y = torch.tensor([values.index(lab[k]) for lab in train_labels])
        y_test = torch.tensor([values.index(lab[k]) for lab in test_labels])
        out[attribute] = _probe_accuracy(train, y, test, y_test, len(values), weight_decay)
    return out


def word_grounding(checkpoint: str | Path, stills: str | Path) -> dict[str, float]:
    """Masked-word accuracy of an image-text pretrained checkpoint on its held-out stills, per attribute: each
    colour, shape or direction word of every held-out caption masked alone and predicted among that attribute's
    words (percent; chance 100 / the number of words: colour 17, shape and direction 25)."""
    cfg = load_config("synthetic_tiny_pretrain", [f"data.root={stills}"])
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    store, tok = open_store(cfg.data.frame_store), cached_tokenizer(cfg.data.tokenizer)
    words = {a: tok.convert_tokens_to_ids(list(values)) for a, values in ATTRIBUTES.items()}  # attribute -> ids
    attribute_of = {i: a for a, ids in words.items() for i in ids}
    right = dict.fromkeys(ATTRIBUTES, 0)
    total = dict.fromkeys(ATTRIBUTES, 0)
    with torch.no_grad():
        for row in load_annotations(cfg.data.val_file)[0]:  # one held-out caption per row
            clip = video_clips(store, row["video_id"], cfg, train=False, rng=np.random.default_rng(0))
            grid = model.encode_grid(torch.from_numpy(clip)[None])  # (1, 1, h, w, D)
            enc = tokenize(tok, row["texts"][:1], cfg.data.max_txt_len)
            ids, mask = torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])  # (1, L)
            for pos in [p for p in range(ids.shape[1]) if int(ids[0, p]) in attribute_of]:
                target = int(ids[0, pos])
                masked, picked = ids.clone(), torch.zeros_like(ids, dtype=torch.bool)
                masked[0, pos], picked[0, pos] = tok.mask_token_id, True
                logits, _ = model.pretrain_logits(grid, masked[:, None], mask[:, None], picked[:, None])  # (1, V)
                candidates = words[attribute_of[target]]
                right[attribute_of[target]] += candidates[int(logits[0, candidates].argmax())] == target
                total[attribute_of[target]] += 1
    return {a: 100.0 * right[a] / total[a] for a in ATTRIBUTES if total[a]}
