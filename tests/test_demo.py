"""Tests for the tour's own arithmetic (jobs/demo.py): how many event attributes two videos share."""

import pytest

from jobs.demo import attribute_agreement


def _video(*events: tuple[str, str, str]) -> dict:
    return {"events": [{"color": c, "shape": s, "direction": d, "lane": 0.5} for c, s, d in events]}


@pytest.mark.parametrize("other, shared", [
    (_video(("red", "circle", "left"), ("blue", "square", "up")), 6),
    (_video(("red", "circle", "right"), ("blue", "square", "up")), 5),
    (_video(("blue", "square", "up"), ("red", "circle", "left")), 0),  # the same events in the other order
    (_video(("green", "cross", "down"), ("yellow", "triangle", "right")), 0),
    (_video(("red", "square", "down"), ("green", "square", "up")), 3),
])
def test_attribute_agreement_counts_matches_event_by_event(other, shared):
    query = _video(("red", "circle", "left"), ("blue", "square", "up"))
    assert attribute_agreement(query, other) == shared
