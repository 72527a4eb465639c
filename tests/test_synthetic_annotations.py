"""Tests of clipbert/synthetic/annotations.py: annotation formats and splits, captions, MC options, QA questions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic_helpers import TINY, read_jsonl, tiny_mixed_corpus

from clipbert.synthetic.annotations import mc_example
from clipbert.synthetic.corpus import CorpusInfo, synthesize_corpus
from clipbert.synthetic.vocabulary import ATTRIBUTES, caption, tokenize_words
from clipbert.synthetic.world import SPLITS, SynthesisConfig, draw_specs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> CorpusInfo:
    return tiny_mixed_corpus(tmp_path_factory.mktemp("corpus"))


def test_splits_are_disjoint_and_complete(corpus):
    assert {s: len(ids) for s, ids in corpus.splits.items()} == {"train": 5, "val": 2, "test": 3}
    ids = [i for s in SPLITS for i in corpus.splits[s]]
    assert len(set(ids)) == 10 and sorted(ids) == sorted(v.video_id for v in corpus.videos)
    for split in SPLITS:
        for task, key in (("retrieval", "clip_name"), ("mc", "clip_name"), ("qa", "video_id")):
            rows = read_jsonl(corpus.annotation_path(task, split))
            assert {r[key] for r in rows} == set(corpus.splits[split]), (task, split)


def test_annotation_fields_and_types(corpus):
    for split in SPLITS:
        for r in read_jsonl(corpus.annotation_path("retrieval", split)):
            assert set(r) == {"clip_name", "caption", "sen_id"} and isinstance(r["caption"], str)
        for r in read_jsonl(corpus.annotation_path("mc", split)):
            assert set(r) == {"qid", "clip_name", "options", "answer"}
            assert isinstance(r["answer"], int) and len(r["options"]) == 5
        for r in read_jsonl(corpus.annotation_path("qa", split)):
            assert set(r) == {"video_id", "question", "answer", "answer_type"}
            assert r["answer_type"] in ("color", "shape", "direction")
    qa_train = read_jsonl(corpus.annotation_path("qa", "train"))
    assert len(qa_train) == 5 * 3
    ans2label = json.loads(corpus.ans2label_path.read_text())
    assert set(ans2label) == {r["answer"] for r in qa_train}
    assert sorted(ans2label.values()) == list(range(len(ans2label)))


def test_retrieval_caption_names_both_events_in_order(corpus):
    by_id = {v.video_id: v for v in corpus.videos}
    for r in read_jsonl(corpus.annotation_path("retrieval", "train")):
        e0, e1 = by_id[r["clip_name"]].events
        assert r["caption"] == f"a {e0.color} {e0.shape} moves {e0.direction}, then a {e1.color} {e1.shape} moves {e1.direction}"


def test_paraphrases_add_a_second_train_caption(tmp_path):
    info = synthesize_corpus(tmp_path, n_videos=4, seed=1, paraphrases=True, val_videos=1, test_videos=1, **TINY)
    rows = read_jsonl(info.annotation_path("retrieval", "train"))
    assert len(rows) == 4 and len({r["caption"] for r in rows}) == 4
    assert [r["sen_id"] for r in rows] == [0, 1, 2, 3]
    assert len(read_jsonl(info.annotation_path("retrieval", "val"))) == 1


def _parse_caption(text: str) -> tuple[tuple[str, str, str], ...]:
    first, second = text.split(", then ")
    return tuple(tuple(part.split()[1:2] + part.split()[2:3] + part.split()[4:5]) for part in (first, second))


def test_mc_answer_is_the_truth_and_distractors_differ_beyond_order(corpus):
    by_id = {v.video_id: v for v in corpus.videos}
    rows = [r for s in SPLITS for r in read_jsonl(corpus.annotation_path("mc", s))]
    for r in rows:
        truth = by_id[r["clip_name"]].events
        assert r["options"][r["answer"]] == caption(truth)
        keys = [tuple(sorted(_parse_caption(o))) for o in r["options"]]
        assert len(set(keys)) == 5  # no option equals another, even with the events swapped
        for o in r["options"]:
            (c0, s0, d0), (c1, s1, d1) = _parse_caption(o)
            assert c0 != c1 and s0 != s1 and d0 != d1  # distractors look like real captions


def test_mc_distractor_changes_stay_in_range():
    cfg = SynthesisConfig(n_videos=50, mc_changes=(1, 1))
    rng = np.random.default_rng(0)
    for spec in draw_specs(cfg, rng)[:30]:
        row = mc_example(spec, 0, cfg, rng)
        truth = [e.key() for e in spec.events]
        for i, o in enumerate(row["options"]):
            diff = sum(a != b for ev, tev in zip(_parse_caption(o), truth) for a, b in zip(ev, tev))
            assert diff == (0 if i == row["answer"] else 1)


def test_qa_questions_are_unambiguous_and_answers_right(corpus):
    by_id = {v.video_id: v for v in corpus.videos}
    values = {v: attr for attr, vals in ATTRIBUTES.items() for v in vals}
    for split in SPLITS:
        for r in read_jsonl(corpus.annotation_path("qa", split)):
            cues = {values[w]: w for w in tokenize_words(r["question"]) if w in values}
            assert r["answer_type"] not in cues and cues
            matches = [e for e in by_id[r["video_id"]].events if all(getattr(e, a) == w for a, w in cues.items())]
            assert len(matches) == 1
            assert getattr(matches[0], r["answer_type"]) == r["answer"]


def test_vocab_covers_every_word(corpus):
    vocab = set(corpus.vocab_path.read_text().split())
    texts = []
    for split in SPLITS:
        texts += [r["caption"] for r in read_jsonl(corpus.annotation_path("retrieval", split))]
        texts += [o for r in read_jsonl(corpus.annotation_path("mc", split)) for o in r["options"]]
        texts += [r["question"] + " " + r["answer"] for r in read_jsonl(corpus.annotation_path("qa", split))]
    used = {w for t in texts for w in tokenize_words(t)}
    assert used <= vocab
    assert {"red", "circle", "left", "then", ",", "?"} <= vocab
