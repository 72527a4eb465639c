"""The words of the synthetic world: attribute values, caption and question templates, and the word list.

Small and free of numpy, PyAV and rendering, so that modules needing only the attribute vocabulary (CNN pretraining
on attribute labels, caption-word pretraining, benchmarks) can import it cheaply.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Protocol

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "white": (235, 235, 235),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "direction": tuple(DIRECTIONS),
}

CAPTION_TEMPLATE = "a {c0} {s0} moves {d0}, then a {c1} {s1} moves {d1}"
PARAPHRASE_TEMPLATE = "first a {c0} {s0} goes {d0}, and after that a {c1} {s1} goes {d1}"
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {  # answer_type -> templates over the other attributes
    "color": (
        "what color is the {shape}?",
        "what color is the shape that moves {direction}?",
        "what color is the {shape} that moves {direction}?",
    ),
    "shape": (
        "what shape is {color}?",
        "what shape moves {direction}?",
        "which shape is {color} and moves {direction}?",
    ),
    "direction": (
        "which way does the {color} shape move?",
        "which way does the {shape} move?",
        "which way does the {color} {shape} move?",
    ),
}

# Captions of stills (clipbert.synthetic.stills): what one picture shows, without time. {c}/{s}/{d} describe one
# shape, {edge} the image edge nearest to it; the *_PAIR templates describe two shapes.
STILL_TEMPLATES: tuple[str, ...] = (
    "a {c} {s} moves {d}",
    "a {c} {s} moving {d}",
    "the {s} is {c} and goes {d}",
    "a {c} {s} near the {edge} edge",
    "a {c} {s}",
)
STILL_PAIR_TEMPLATES: tuple[str, ...] = (
    "a {c0} {s0} moves {d0} and a {c1} {s1} moves {d1}",
    "a {c0} {s0} and a {c1} {s1}",
    "a {c0} {s0} moves {d0} next to a {c1} {s1}",
)
EDGES: tuple[str, ...] = ("top", "bottom", "left", "right")


class Keyed(Protocol):
    """An event as captions see it (world.Event): its (colour, shape, direction)."""

    def key(self) -> tuple[str, str, str]: ...


def caption(events: Sequence[Keyed], paraphrase: bool = False) -> str:
    """Caption of a two-event video, events (world.Event) in their order of appearance."""
    template = PARAPHRASE_TEMPLATE if paraphrase else CAPTION_TEMPLATE
    (c0, s0, d0), (c1, s1, d1) = events[0].key(), events[1].key()
    return template.format(c0=c0, s0=s0, d0=d0, c1=c1, s1=s1, d1=d1)


def tokenize_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, as BERT's basic tokenizer splits them."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


def vocabulary_words() -> list[str]:
    """Every token that any caption, option or question of the generator can contain, sorted."""
    fills = {k: " ".join(v) for k, v in ATTRIBUTES.items()}
    texts = [CAPTION_TEMPLATE, PARAPHRASE_TEMPLATE, *itertools.chain(*QUESTION_TEMPLATES.values()),
             *STILL_TEMPLATES, *STILL_PAIR_TEMPLATES]
    words = set()
    for text in texts:
        filled = text.format(c0=fills["color"], s0=fills["shape"], d0=fills["direction"],
                             c1="", s1="", d1="", c="", s="", d="", edge=" ".join(EDGES), **fills)
        words.update(tokenize_words(filled))
    return sorted(words)
