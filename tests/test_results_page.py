"""Tests for the results page renderer (clipbert/retrieval/results_page.py): structure, escaping, frame sources."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import numpy as np

from clipbert.data.frames import FrameStore
from clipbert.retrieval.results_page import QueryResult, inline_src, render_page, url_src
from clipbert.retrieval.search import Hit


class _Elements(HTMLParser):
    """Start tags with their attributes, in document order."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", "").split())]


def _result(query: str, ids: list[str], n: int = 3, t: int = 2) -> QueryResult:
    hits = [Hit(r + 1, v, 0.5 - 0.1 * r, 0.9 if r == 0 else None) for r, v in enumerate(ids)]
    frames = [np.arange(n * t).reshape(n, t) + r for r in range(len(ids))]  # (N, T) per hit
    return QueryResult(query, hits, frames, {"encode": 1.5, "total": 9.0})


def test_each_hit_has_rank_id_scores_and_a_strip_of_its_clips():
    page = render_page([_result("red circle", ["a", "b/c"]), _result("blue", ["d"])], url_src,
                       form={"q": "red circle", "k": 2, "rerank": 1})
    el = _Elements(page)
    assert [a["data-query"] for a in el.find("section", "query")] == ["red circle", "blue"]
    hits = [(a["data-rank"], a["data-video-id"]) for a in el.find("li", "hit")]
    assert hits == [("1", "a"), ("2", "b/c"), ("1", "d")]
    assert len(el.find("div", "clip")) == 3 * 3  # N clips per hit
    srcs = [a["src"] for a in el.find("img")]
    assert len(srcs) == 3 * 3 * 2 and srcs[:2] == ["/frames/a/0.jpg", "/frames/a/1.jpg"]
    assert "/frames/b/c/1.jpg" in srcs  # hit 2 frames start at 1
    assert "dual +0.5000" in page and "cross 0.9000" in page and "cross -" in page
    assert "encode 1.5 ms, total 9.0 ms" in page
    assert [a["value"] for a in el.find("input") if a.get("name") == "q"] == ["red circle"]


def test_text_is_escaped():
    page = render_page([_result("<script>alert(1)</script>", ['x"><img src=y>'])], url_src, form={"q": '"><b>'})
    assert "<script>" not in page and "<b>" not in page and '"><img src=y>' not in page
    el = _Elements(page)
    assert el.find("li", "hit")[0]["data-video-id"] == 'x"><img src=y>'
    assert el.find("section", "query")[0]["data-query"] == "<script>alert(1)</script>"
    assert len(el.find("img")) == 6  # only the strip's images


def test_contact_sheet_has_no_form_and_inlines_the_stored_bytes(tiny_corpus):
    store = FrameStore(tiny_corpus.frames)
    video = store.ids()[0]
    page = render_page([_result("red", [video], n=2, t=1)], inline_src(store), title="sheet")
    el = _Elements(page)
    assert el.find("form") == [] and "<title>sheet</title>" in page
    srcs = [a["src"] for a in el.find("img")]
    prefix = "data:image/jpeg;base64,"
    assert len(srcs) == 2 and all(s.startswith(prefix) for s in srcs)
    assert [base64.b64decode(s[len(prefix):]) for s in srcs] == store.get_jpeg(video, [0, 1])


def test_url_src_quotes_each_segment():
    assert url_src("cam a/v#1", 3) == "/frames/cam%20a/v%231/3.jpg"
    assert url_src("video7", np.int64(12)) == "/frames/video7/12.jpg"
