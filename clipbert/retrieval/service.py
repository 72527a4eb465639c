"""The search service (Ray Serve + FastAPI): a JSON search API, stored JPEG frames and a results page over one index.

Routes (every bad input is a 4xx whose JSON body is ``{"error": "<one line>"}``; nothing is read outside the
frame store: frames are LMDB records looked up by a validated video id, never files named by the request):

- ``GET /search?q=TEXT&k=10&rerank=10``: JSON ``{"query", "k", "rerank", "hits": [{"rank", "video_id",
  "dual_score", "rerank_score", "frames"}], "timings_ms": {"encode", "search", "rerank", "total"},
  "encode_batch"}``; ``frames`` are the (N, T) stored-frame indices of the hit's N inference clips.
- ``GET /frames/{video_id}/{index}.jpg``: the stored JPEG bytes of one frame (video ids may contain '/').
- ``GET /?q=TEXT&k=..&rerank=..``: the results page (a search box; each hit's rank, id, scores and frame strip).

The model, index and frame store are loaded once per replica; text encoding of concurrent requests is batched
(``@serve.batch``), and model work runs on one thread per replica beside the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import time
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException

from clipbert.data.frames import MAX_KEY_BYTES, FrameStore
from clipbert.retrieval.results_page import QueryResult, clip_frames, render_page, url_src
from clipbert.retrieval.search import Hit, Searcher, merge_hits

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 500  # longer queries are refused (the model reads only data.max_txt_len word pieces anyway)
MAX_K = 1000  # hits per query
MAX_RERANK = 100  # cross-encoder passes per query
_INT = re.compile(r"-?[0-9]{1,9}")


class ApiError(Exception):
    """A refused request: its HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def check_query(q: str | None) -> str:
    """The stripped query; ApiError 400 when missing, blank or longer than MAX_QUERY_CHARS characters."""
    text = (q or "").strip()
    if not text:
        raise ApiError(400, "empty query: give some text to search for (q=...)")
    if len(text) > MAX_QUERY_CHARS:
        raise ApiError(400, f"query is {len(text)} characters long; at most {MAX_QUERY_CHARS} are accepted")
    return text


def check_int(name: str, raw: str | None, lo: int, hi: int, *, default: int | None = None, status: int = 400) -> int:
    """`raw` as an integer in [lo, hi] (missing or empty: `default`, when given); ApiError 400 when not an integer,
    `status` when out of range."""
    if not raw and default is not None:
        return default
    if raw is None or not _INT.fullmatch(raw.strip()):
        raise ApiError(400, f"{name} must be an integer, got {str(raw)[:40]!r}")
    value = int(raw)
    if not lo <= value <= hi:
        raise ApiError(status, f"{name} must be in {lo}..{hi}, got {value}")
    return value


def check_video_id(video_id: str, store: FrameStore) -> str:
    """A video id of the store; ApiError 400 for an id that would leave it (absolute, '..'), 404 for an unknown one."""
    parts = video_id.split("/")
    if not video_id or video_id.startswith("/") or "\\" in video_id or "\x00" in video_id \
            or any(p in ("", ".", "..") for p in parts) or len(video_id.encode()) > MAX_KEY_BYTES:
        raise ApiError(400, f"invalid video id {video_id[:100]!r}: not a path inside the frame store")
    if video_id not in store:
        raise ApiError(404, f"no video {video_id[:100]!r} in the frame store")
    return video_id


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(reason).split())}, status_code=status)


app = FastAPI(title="ClipBERT video search", docs_url=None, redoc_url=None)


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.reason)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    return _error(400, f"bad request: {'.'.join(map(str, first.get('loc', ())))} {first.get('msg', '')}")


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _error(exc.status_code, exc.detail)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
@serve.ingress(app)
class SearchService:
    """One replica: the Searcher (model + index), the frame store, and the routes.

    Args:
        index_dir: a directory written by jobs/build_index.py.
        checkpoint, frame_store, tokenizer: overrides of what the index was built from (see Searcher).
        rerank: the default re-rank depth of a request that gives none (clamped to MAX_RERANK).
    """

    def __init__(self, index_dir: str, checkpoint: str | None = None, frame_store: str | None = None,
                 tokenizer: str | None = None, rerank: int = 10):
        self.searcher = Searcher(index_dir, checkpoint=checkpoint, frame_store=frame_store, tokenizer=tokenizer)
        self.store = FrameStore(self.searcher.cfg.data.frame_store)
        self.default_rerank = max(0, min(rerank, MAX_RERANK))
        self.note = f"index {index_dir}: {self.searcher.gallery_size} videos, checkpoint " \
                    f"{self.searcher.checkpoint_hash}"
        self._model_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    async def _on_model_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, fn, *args)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _encode(self, queries: list[str]) -> list[tuple[np.ndarray, int]]:
        """Concurrent requests' queries -> one (E,) embedding each, with the size of the batch it was encoded in."""
        embeddings = await self._on_model_thread(self.searcher.encode, queries)  # (Q, E)
        return [(row, len(queries)) for row in embeddings]

    async def _search(self, q: str | None, k: str | None, rerank: str | None) -> dict[str, Any]:
        query = check_query(q)
        k_value = check_int("k", k, 1, MAX_K, default=10)
        r_value = check_int("rerank", rerank, 0, MAX_RERANK, default=self.default_rerank)
        t0 = time.perf_counter()
        embedding, batch = await self._encode(query)
        t1 = time.perf_counter()
        hits, search_s = await self._on_model_thread(self._rank, query, embedding, k_value, r_value)
        t2 = time.perf_counter()
        timings = {"encode": 1e3 * (t1 - t0), "search": 1e3 * search_s, "rerank": 1e3 * (t2 - t1 - search_s),
                   "total": 1e3 * (t2 - t0)}
        return {"query": query, "k": k_value, "rerank": r_value, "hits": hits, "timings_ms": timings,
                "encode_batch": batch}

    def _rank(self, query: str, embedding: np.ndarray, k: int, rerank: int) -> tuple[list[dict], float]:
        """(JSON hits, seconds of the index search) of one query embedding (E,)."""
        k, rerank = self.searcher.depths(k, rerank)
        t0 = time.perf_counter()
        found, dual = self.searcher.candidates(embedding[None, :], max(k, rerank))  # Q = 1
        search_s = time.perf_counter() - t0
        cross = self.searcher.rerank([query], [found[0][:rerank]], dual)[0] if rerank else np.zeros(0)
        hits = merge_hits(found[0], dual[0], cross, k)
        return [{"rank": h.rank, "video_id": h.video_id, "dual_score": h.dual_score, "rerank_score": h.rerank_score,
                 "frames": clip_frames(self.searcher, self.store, h.video_id).tolist()} for h in hits], search_s

    @app.get("/search")
    async def search(self, q: str | None = None, k: str | None = None, rerank: str | None = None) -> dict[str, Any]:
        return await self._search(q, k, rerank)

    @app.get("/frames/{video_id:path}/{index}.jpg")
    async def frame(self, video_id: str, index: str) -> Response:
        video_id = check_video_id(video_id, self.store)
        n = self.store.n_stored(video_id)
        i = check_int(f"frame index of {video_id[:100]!r}", index, 0, n - 1, status=404)
        data = self.store.get_jpeg(video_id, [i])[0]
        return Response(content=data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse)
    async def page(self, q: str | None = None, k: str | None = None, rerank: str | None = None) -> HTMLResponse:
        form = {"q": q or "", "k": k or 10, "rerank": self.default_rerank if rerank is None else rerank}
        results = []
        if q is not None:
            out = await self._search(q, k, rerank)
            hits = [Hit(h["rank"], h["video_id"], h["dual_score"], h["rerank_score"]) for h in out["hits"]]
            results.append(QueryResult(out["query"], hits, [np.array(h["frames"]) for h in out["hits"]],
                                       out["timings_ms"]))
        return HTMLResponse(render_page(results, url_src, form=form, note=self.note))


def build_app(index_dir: str, *, checkpoint: str | None = None, frame_store: str | None = None,
              tokenizer: str | None = None, rerank: int = 10, replicas: int = 1, num_cpus: float = 0.5) -> Application:
    """The Serve application: `replicas` copies of SearchService, each holding `num_cpus` CPUs."""
    return SearchService.options(num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus}).bind(
        index_dir, checkpoint=checkpoint, frame_store=frame_store, tokenizer=tokenizer, rerank=rerank)


def app_builder(args: dict[str, str]) -> Application:
    """For ``serve run clipbert.retrieval.service:app_builder index_dir=DIR [rerank=10 replicas=1 num_cpus=0.5]``."""
    return build_app(args["index_dir"], checkpoint=args.get("checkpoint"), frame_store=args.get("frame_store"),
                     tokenizer=args.get("tokenizer"), rerank=int(args.get("rerank", 10)),
                     replicas=int(args.get("replicas", 1)), num_cpus=float(args.get("num_cpus", 0.5)))
