"""The search results page: each hit's rank, video id, both scores and a strip of its clips' frames, as HTML.

One renderer serves the service's page (frames as ``/frames/...`` URLs) and the static contact sheet of
``jobs/search.py --html`` (frames inlined as ``data:`` URIs, so the file stands alone). The page has no scripts:
its search box is a plain GET form on ``/``.
"""

from __future__ import annotations

import base64
import dataclasses
import html
from typing import Callable, Mapping, Sequence
from urllib.parse import quote

import numpy as np

from clipbert.data.clips import inference_indices
from clipbert.data.frames import FrameStore
from clipbert.retrieval.search import Hit, Searcher

FrameSrc = Callable[[str, int], str]  # (video_id, stored frame index) -> the <img> src of that frame

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
form { margin-bottom: 1rem; } input[name=q] { width: 32rem; } input[type=number] { width: 4.5rem; }
.query { margin-bottom: 2rem; } .timings { color: #666; font-size: 0.85rem; }
ol.hits { list-style: none; padding: 0; }
li.hit { margin: 0.6rem 0; padding: 0.4rem; border-bottom: 1px solid #ddd; }
.meta span { margin-right: 1rem; } .rank { font-weight: bold; } .video-id { font-family: monospace; }
.strip { display: flex; flex-wrap: wrap; gap: 0.5rem; margin-top: 0.3rem; }
.clip { display: flex; gap: 1px; padding: 2px; background: #ccc; }
.clip img { height: 72px; display: block; }
.error { color: #a00; }
"""


@dataclasses.dataclass(frozen=True)
class QueryResult:
    """One query's hits, with the frames of each hit's clips to show."""

    query: str
    hits: Sequence[Hit]
    frames: Sequence[np.ndarray]  # per hit: int64 (N, T) stored-frame indices of its N clips of T frames
    timings_ms: Mapping[str, float] | None = None  # stage -> milliseconds, shown under the query


def clip_frames(searcher: Searcher, store: FrameStore, video_id: str) -> np.ndarray:
    """int64 (N, T): the stored frames of the N inference clips the index embedded for this video."""
    return inference_indices(store, video_id, searcher.cfg.sampling, searcher.n_clips)


def contact_sheet(searcher: Searcher, queries: Sequence[str], results: Sequence[Sequence[Hit]], *,
                  note: str = "") -> str:
    """A self-contained page of several queries' hits (frames inlined from the searcher's frame store)."""
    store = FrameStore(searcher.cfg.data.frame_store)
    pages = [QueryResult(q, hits, [clip_frames(searcher, store, h.video_id) for h in hits])
             for q, hits in zip(queries, results)]
    return render_page(pages, inline_src(store), title="ClipBERT search: contact sheet", note=note)


def url_src(video_id: str, index: int) -> str:
    """The service's URL of a stored frame (ids may hold '/': each path segment is quoted)."""
    return f"/frames/{quote(video_id)}/{int(index)}.jpg"


def inline_src(store: FrameStore) -> FrameSrc:
    """Frames of `store` inlined as base64 ``data:`` URIs of the stored JPEG bytes (no re-encode)."""

    def src(video_id: str, index: int) -> str:
        data = store.get_jpeg(video_id, [int(index)])[0]
        return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")

    return src


def render_page(results: Sequence[QueryResult], frame_src: FrameSrc, *, title: str = "ClipBERT video search",
                form: Mapping[str, str | int] | None = None, note: str = "") -> str:
    """A whole HTML page: an optional search form (its field values in `form`: q, k, rerank), then each query.

    Args:
        results: the queries and their hits, in display order.
        frame_src: where each frame's <img> points (``url_src`` or ``inline_src(store)``).
        title: the page title and heading.
        form: None for no form (the contact sheet), else the values to prefill.
        note: a line under the heading (e.g. the index and checkpoint searched).
    """
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    if note:
        body.append(f'<p class="note">{e(note)}</p>')
    if form is not None:
        body.append(_form(form))
    body.extend(_query(r, frame_src) for r in results)
    head = f'<head><meta charset="utf-8"><title>{e(title)}</title><style>{STYLE}</style></head>'
    return f'<!doctype html>\n<html lang="en">{head}\n<body>\n' + "\n".join(body) + "\n</body></html>\n"


def _form(values: Mapping[str, str | int]) -> str:
    e = html.escape
    return ('<form id="search" method="get" action="/">'
            f'<input id="q" name="q" type="search" placeholder="a red circle moves left, then ..." '
            f'value="{e(str(values.get("q", "")))}" autofocus> '
            f'<label>k <input id="k" name="k" type="number" min="1" max="1000" value="{e(str(values.get("k", 10)))}">'
            f'</label> <label>re-rank <input id="rerank" name="rerank" type="number" min="0" '
            f'value="{e(str(values.get("rerank", 10)))}"></label> <button id="go" type="submit">Search</button></form>')


def _query(result: QueryResult, frame_src: FrameSrc) -> str:
    e = html.escape
    timings = ""
    if result.timings_ms:
        timings = '<p class="timings">' + ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items()) + "</p>"
    hits = "\n".join(_hit(h, f, frame_src) for h, f in zip(result.hits, result.frames))
    return (f'<section class="query" data-query="{e(result.query)}"><h2>{e(result.query)}</h2>{timings}\n'
            f'<ol class="hits">\n{hits}\n</ol></section>')


def _hit(hit: Hit, frames: np.ndarray, frame_src: FrameSrc) -> str:
    e = html.escape
    cross = f"{hit.rerank_score:.4f}" if hit.rerank_score is not None else "-"
    clips = "".join(
        '<div class="clip">' + "".join(
            f'<img src="{e(frame_src(hit.video_id, int(i)))}" alt="{e(hit.video_id)} frame {int(i)}">' for i in clip)
        + "</div>" for clip in np.asarray(frames))
    return (f'<li class="hit" data-video-id="{e(hit.video_id)}" data-rank="{hit.rank}"><div class="meta">'
            f'<span class="rank">#{hit.rank}</span><span class="video-id">{e(hit.video_id)}</span>'
            f'<span class="dual">dual {hit.dual_score:+.4f}</span><span class="cross">cross {cross}</span></div>'
            f'<div class="strip">{clips}</div></li>')
