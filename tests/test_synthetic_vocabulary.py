"""Tests of clipbert/synthetic/vocabulary.py: caption and paraphrase text, the word splitting, and a word list that
holds every word the generator's captions, options, questions and answers can contain."""

from __future__ import annotations

import itertools

import pytest

from clipbert.synthetic.vocabulary import (
    ATTRIBUTES,
    EDGES,
    QUESTION_TEMPLATES,
    STILL_PAIR_TEMPLATES,
    STILL_TEMPLATES,
    caption,
    tokenize_words,
    vocabulary_words,
)
from clipbert.synthetic.world import Event

EVENTS = (Event("red", "circle", "left"), Event("blue", "square", "up", lane=0.2))


def test_caption_tells_both_events_in_order():
    assert caption(EVENTS) == "a red circle moves left, then a blue square moves up"
    assert caption(EVENTS[::-1]) == "a blue square moves up, then a red circle moves left"


def test_paraphrase_tells_the_same_events_in_other_words():
    assert caption(EVENTS, paraphrase=True) == "first a red circle goes left, and after that a blue square goes up"


@pytest.mark.parametrize("text, words", [
    ("a red circle moves left, then a blue square moves up",
     ["a", "red", "circle", "moves", "left", ",", "then", "a", "blue", "square", "moves", "up"]),
    ("What color is the Cross?", ["what", "color", "is", "the", "cross", "?"]),
    ("  video42 (e.g.)\n", ["video42", "(", "e", ".", "g", ".", ")"]),
    ("", []),
])
def test_tokenize_words_lower_cases_and_splits_off_punctuation(text, words):
    assert tokenize_words(text) == words


def _every_text() -> list[str]:
    """Every caption, paraphrase, question, answer and still caption the generator can write."""
    events = [Event(c, s, d) for c, s, d in itertools.product(*ATTRIBUTES.values())]
    pairs = [(a, b) for a in events for b in events]
    texts = [caption(p, paraphrase) for p in pairs for paraphrase in (False, True)]
    texts += [t.format(color=c, shape=s, direction=d) for t in itertools.chain(*QUESTION_TEMPLATES.values())
              for c, s, d in itertools.product(*ATTRIBUTES.values())]
    texts += [w for values in ATTRIBUTES.values() for w in values]  # the answers
    texts += [t.format(c=e.color, s=e.shape, d=e.direction, edge=edge) for t in STILL_TEMPLATES for e in events
              for edge in EDGES]
    texts += [t.format(c0=a.color, s0=a.shape, d0=a.direction, c1=b.color, s1=b.shape, d1=b.direction)
              for t in STILL_PAIR_TEMPLATES for a, b in pairs]
    return texts


def test_vocabulary_words_are_exactly_the_words_of_every_text():
    words = vocabulary_words()
    assert words == sorted(set(words))
    assert set(words) == {w for text in _every_text() for w in tokenize_words(text)}
    assert {"red", "circle", "left", "then", "first", "top", "color", ",", "?"} <= set(words)
