import numpy as np

from clipbert.data.caption_swaps import build_swap_table, swap_negatives

CAPTIONS = [
    "a red circle moves left, then a blue square moves up",
    "a green circle moves down, then a red cross moves left",
    "a blue square moves right, then a green square moves down",
]


def test_table_holds_words_seen_in_one_context_and_drops_single_ones():
    table = build_swap_table(CAPTIONS)
    assert table[("a", "circle")] == ("green", "red")
    assert table[("moves", ",")] == ("down", "left", "right")
    assert table[("moves", "</s>")] == ("down", "left", "up")
    assert ("<s>", "red") not in table  # "a" is the only word there
    assert all(len(words) > 1 for words in table.values())


def test_swaps_change_one_word_each_at_distinct_positions():
    table = build_swap_table(CAPTIONS)
    positive = CAPTIONS[0]
    out = swap_negatives(positive, table, 3, np.random.default_rng(0))
    assert len(out) == 3 and len(set(out)) == 3
    words = positive.split()
    changed = []
    for text in out:
        diff = [i for i, (a, b) in enumerate(zip(words, text.split())) if a != b]
        assert len(diff) == 1 and len(text.split()) == len(words)
        changed.append(diff[0])
    assert len(set(changed)) == 3
    assert all(t.count(",") == 1 for t in out)  # punctuation kept in place


def test_swaps_are_seeded_and_avoid_the_videos_own_captions():
    table = build_swap_table(CAPTIONS)
    a = swap_negatives(CAPTIONS[0], table, 2, np.random.default_rng(5))
    assert a == swap_negatives(CAPTIONS[0], table, 2, np.random.default_rng(5))
    only = build_swap_table(["x a y", "x b y"])
    assert swap_negatives("x a y", only, 1, np.random.default_rng(0), avoid=frozenset({"x b y"})) == []


def test_a_caption_without_swappable_words_gives_none():
    table = build_swap_table(CAPTIONS)
    assert swap_negatives("something else entirely", table, 2, np.random.default_rng(0)) == []
