"""One-word caption swaps: negative captions that differ from their positive in a single word.

In-batch and random negatives differ from the positive in many words at once, so a cross-encoder can tell them
apart by the easiest attribute alone (on the synthetic corpus: colour) and never learns the others. A swap
replaces one word of the positive by another word that the training captions show in the same place, so the
negative differs in exactly one slot: one colour, one shape, one direction.

Which words may replace which is learned from the captions alone, by co-occurrence: two words are interchangeable
where some training caption shows each between the same left and right neighbours ("a red circle" and "a blue
circle" make red and blue interchangeable before "circle"). No attribute list or label is read. A swap that gives
another caption of the same video is not drawn; synonyms that share a context ("moves" / "goes") still do give
false negatives, so corpora with paraphrased captions should be checked before turning swaps on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

TOKEN = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks, as BERT's basic tokenizer splits them
START, END = "<s>", "</s>"

Context = tuple[str, str]  # (left neighbour, right neighbour), lower case
SwapTable = dict[Context, tuple[str, ...]]  # context -> the words seen in it (two or more), sorted


def _spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, lower-cased token) of every token of `text`."""
    return [(m.start(), m.end(), m.group().lower()) for m in TOKEN.finditer(text)]


def _contexts(tokens: Sequence[str]) -> list[Context]:
    """The (left, right) neighbours of each token, START / END at the ends."""
    padded = [START, *tokens, END]
    return [(padded[i], padded[i + 2]) for i in range(len(tokens))]


def build_swap_table(captions: Iterable[str]) -> SwapTable:
    """The interchangeable words of each context seen in `captions` (contexts with a single word are left out)."""
    seen: dict[Context, set[str]] = defaultdict(set)
    for text in captions:
        tokens = [t for _, _, t in _spans(text)]
        for token, context in zip(tokens, _contexts(tokens)):
            if token[0].isalnum():
                seen[context].add(token)
    return {c: tuple(sorted(words)) for c, words in seen.items() if len(words) > 1}


def swap_negatives(text: str, table: SwapTable, k: int, rng: np.random.Generator,
                   avoid: frozenset[str] = frozenset()) -> list[str]:
    """Up to k captions that differ from `text` in one word each, each at a different position (fewer when the
    caption has fewer swappable words); none of them is in `avoid` (the video's own captions, lower case)."""
    spans = _spans(text)
    tokens = [t for _, _, t in spans]
    choices = [(i, [w for w in table.get(c, ()) if w != tokens[i]]) for i, c in enumerate(_contexts(tokens))]
    choices = [(i, words) for i, words in choices if words]
    out: list[str] = []
    for j in rng.permutation(len(choices)):
        i, words = choices[int(j)]
        start, end, _ = spans[i]
        for w in rng.permutation(words):
            swapped = text[:start] + str(w) + text[end:]
            if swapped.lower() not in avoid:
                out.append(swapped)
                break
        if len(out) == k:
            break
    return out
