"""Tests of clipbert/training/probes.py: one clip per event with its attributes, the linear probe of the CNN's grid,
and masked attribute-word grounding of a pretrained checkpoint."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from clipbert.synthetic.corpus import load_corpus
from clipbert.synthetic.vocabulary import ATTRIBUTES
from clipbert.training import probes


class _ConstantModel:
    """A stand-in pretrained model whose masked-word logits favour one token id wherever it is asked."""

    def __init__(self, favoured: int, vocab: int):
        self.logits = torch.zeros(1, vocab)
        self.logits[0, favoured] = 1.0

    def eval(self):
        return self

    def encode_grid(self, frames):
        return torch.zeros(1, 1, 3, 3, 4)

    def pretrain_logits(self, grid, ids, mask, picked):
        assert int(picked.sum()) == 1 and int(ids[picked]) != 0  # one masked position, not padding
        return self.logits, None


def test_word_grounding_masks_each_attribute_word_and_predicts_among_that_attributes_words(tiny_stills,
                                                                                           monkeypatch):
    from clipbert.synthetic.vocabulary import tokenize_words
    from clipbert.data.text import cached_tokenizer

    tok = cached_tokenizer(str(tiny_stills / "tokenizer"))
    square = tok.convert_tokens_to_ids("square")
    monkeypatch.setattr(probes, "load_checkpoint", lambda path: (_ConstantModel(square, len(tok)), None))
    accuracy = probes.word_grounding(tiny_stills / "unused", tiny_stills)
    captions = [json.loads(line)["caption"] for line in (tiny_stills / "txt" / "pretrain_val.jsonl").open()]
    said = {a: [w for c in captions for w in tokenize_words(c) if w in values] for a, values in ATTRIBUTES.items()}
    # "square" wins among the shapes; colours and directions get equal logits, so the first word of each wins
    expected = {"color": said["color"].count(ATTRIBUTES["color"][0]), "shape": said["shape"].count("square"),
                "direction": said["direction"].count(ATTRIBUTES["direction"][0])}
    assert accuracy == pytest.approx({a: 100.0 * n / len(said[a]) for a, n in expected.items()})


def test_event_clips_carry_their_events_and_the_probe_reads_the_grid(tiny_corpus, monkeypatch):
    from clipbert.model.checkpoint import build_model

    cfg = tiny_corpus.config("synthetic_tiny")
    clips, labels = probes.event_clips(cfg, "test")
    videos = [v for v in load_corpus(tiny_corpus.root).videos if v.split == "test"]
    assert clips.shape == (2 * len(videos), 1, 2, 3, cfg.model.img_size, cfg.model.img_size)
    assert labels == [e.key() for v in videos for e in v.events]  # event 1 then event 2 of each video
    torch.manual_seed(0)
    model, _ = build_model(cfg.model)
    train = probes.event_clips(cfg, "train")
    probe = probes.linear_probe(model, train, (clips, labels))
    assert set(probe) == {"color", "shape", "direction"} and all(0 <= v <= 100 for v in probe.values())
    # a grid that carries nothing but a constant tells no attribute apart beyond the majority guess
    monkeypatch.setattr(model, "encode_grid", lambda x: torch.ones(len(x), 1, 3, 3, 8))
    blind = probes.linear_probe(model, train, (clips, labels))
    majority = {a: 100 * max(sum(lab[k] == v for lab in labels) for v in set(lab[k] for lab in labels)) / len(labels)
                for k, a in enumerate(("color", "shape", "direction"))}
    assert all(blind[a] <= majority[a] + 1e-6 for a in blind)


class _AttributeGrid:
    """A stand-in model whose grid holds its clip's attributes one-hot, read from the clip: pixel (0, 0) of channel
    k of the first frame is the index of attribute k's value."""

    def eval(self):
        return self

    def encode_grid(self, clips: torch.Tensor) -> torch.Tensor:
        codes = clips[:, 0, 0, :, 0, 0].long()  # (M, 1, T, 3, S, S) -> (M, 3)
        onehot = [F.one_hot(codes[:, k], len(values)) for k, values in enumerate(ATTRIBUTES.values())]
        return torch.cat(onehot, 1).float()[:, None, None, None]  # (M, 1, h=1, w=1, D)


def _clips(labels: list[tuple[str, ...]]) -> probes.EventClips:
    """uint8 clips (M, 1, 2, 3, 4, 4) that carry `labels` for _AttributeGrid, and the labels."""
    clips = torch.zeros(len(labels), 1, 2, 3, 4, 4, dtype=torch.uint8)
    for i, label in enumerate(labels):
        for k, (value, values) in enumerate(zip(label, ATTRIBUTES.values())):
            clips[i, 0, 0, k, 0, 0] = values.index(value)
    return clips, labels


def test_the_probe_reads_every_attribute_a_grid_encodes():
    combos = list(itertools.product(*ATTRIBUTES.values()))  # 96 clips: two passes of 64
    test = [combos[i] for i in range(0, len(combos), 7)]
    probe = probes.linear_probe(_AttributeGrid(), _clips(combos), _clips(test))
    assert probe == {"color": 100.0, "shape": 100.0, "direction": 100.0}
