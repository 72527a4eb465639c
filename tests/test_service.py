"""Tests for the search service (clipbert/retrieval/service.py, jobs/serve.py): validation, the JSON API, frames, the page
in headless Chromium.

The service runs as `python jobs/serve.py` in a subprocess (its own local Ray) over an index whose video ids
include '/' (videos in a sub-directory of the input root); every bad input must come back as a 4xx with a
one-line JSON reason.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import build_frame_store, pick_free_port, tiny_checkpoint, tiny_index

from clipbert.data import frames as fs
from clipbert.retrieval.service import MAX_QUERY_CHARS, ApiError, check_int, check_query, check_video_id

REPO = Path(__file__).resolve().parent.parent
N_CLIPS, T = 3, 2  # the index's clips per video; the preset's frames per clip
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("raw, expected", [("red", "red"), ("  a red circle \n", "a red circle"),
                                           ("x" * MAX_QUERY_CHARS, "x" * MAX_QUERY_CHARS)])
def test_check_query_accepts(raw, expected):
    assert check_query(raw) == expected


@pytest.mark.parametrize("raw, message", [(None, "empty query"), ("", "empty query"), (" \t\n", "empty query"),
                                          ("x" * (MAX_QUERY_CHARS + 1), f"at most {MAX_QUERY_CHARS}")])
def test_check_query_refuses(raw, message):
    with pytest.raises(ApiError, match=message) as e:
        check_query(raw)
    assert e.value.status == 400


@pytest.mark.parametrize("raw, default, expected", [("5", None, 5), (" 7 ", None, 7), (None, 10, 10), ("", 3, 3),
                                                    ("1", None, 1), ("1000", None, 1000)])
def test_check_int_accepts(raw, default, expected):
    assert check_int("k", raw, 1, 1000, default=default) == expected


@pytest.mark.parametrize("raw, status, message", [
    ("0", 400, "k must be in 1..1000, got 0"), ("1001", 400, "got 1001"), ("-3", 400, "got -3"),
    ("abc", 400, "k must be an integer, got 'abc'"), ("1.5", 400, "an integer"), ("1e3", 400, "an integer"),
    (None, 400, "an integer"), ("9" * 40, 400, "an integer")])
def test_check_int_refuses(raw, status, message):
    with pytest.raises(ApiError, match=message) as e:
        check_int("k", raw, 1, 1000)
    assert e.value.status == status


def test_check_int_range_status_is_the_callers():
    with pytest.raises(ApiError) as e:
        check_int("frame index", "12", 0, 11, status=404)
    assert e.value.status == 404


@pytest.mark.parametrize("video_id, status", [
    ("../frames", 400), ("a/../../b", 400), ("/etc/passwd", 400), ("a//b", 400), ("./a", 400), ("a\\..\\b", 400),
    ("a\x00b", 400), ("v" * 600, 400), ("", 400), ("no_such_video", 404)])
def test_check_video_id_refuses(tiny_corpus, video_id, status):
    with pytest.raises(ApiError) as e:
        check_video_id(video_id, fs.FrameStore(tiny_corpus.frames))
    assert e.value.status == status and "\n" not in e.value.reason


def test_check_video_id_accepts_a_stored_id(tiny_corpus):
    store = fs.FrameStore(tiny_corpus.frames)
    assert check_video_id(store.ids()[0], store) == store.ids()[0]


# ------------------------------------------------------------------------------------------- the service
@pytest.fixture(scope="module")
def nested_index(tiny_corpus, tmp_path_factory):
    """8 of the tiny corpus's videos, half of them under cam_a/ (ids with '/'), stored and indexed (random model)."""
    tmp = tmp_path_factory.mktemp("service")
    sources = sorted((tiny_corpus.root / "videos").iterdir())[:8]
    (tmp / "videos" / "cam_a").mkdir(parents=True)
    for i, src in enumerate(sources):
        shutil.copy(src, tmp / "videos" / ("cam_a" if i % 2 else "") / src.name)
    build_frame_store(tmp / "videos", tmp / "frames", fs.StoreOptions(max_fps=4.0, max_side=160))
    cfg = tiny_corpus.config("synthetic_tiny", f"data.frame_store={tmp / 'frames'}")
    checkpoint = tiny_checkpoint(cfg, tmp / "ckpt", seed=0)
    store = fs.FrameStore(tmp / "frames")
    return tiny_index(cfg, checkpoint, store.ids(), tmp, n_clips=N_CLIPS), store


def _wait_for(proc: subprocess.Popen, log: Path, text: str, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"jobs/serve.py exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"jobs/serve.py did not say {text!r} within {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def service(nested_index, tmp_path_factory):
    """`python jobs/serve.py` on a free loopback port over the nested index; yields (port, store, its log text)."""
    index, store = nested_index
    port = pick_free_port()
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "serve.py"), "--index", str(index), "--port",
                                 str(port), "--rerank", "2", "--ray-cpus", "2"], stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO, env=env)
    try:
        _wait_for(proc, log, "serving ", timeout_s=180)
        yield port, store, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of GET `path`, sent as is (no client-side normalisation of '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_serves_on_loopback_by_default(service):
    port, _, log = service
    assert f"on http://127.0.0.1:{port}/" in log


@pytest.mark.slow
def test_search_json(service):
    port, store, _ = service
    status, ctype, body = _get(port, "/search?q=a+red+circle+moves+left&k=5&rerank=2")
    assert (status, ctype) == (200, "application/json")
    out = json.loads(body)
    assert (out["query"], out["k"], out["rerank"]) == ("a red circle moves left", 5, 2)
    hits = out["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert len({h["video_id"] for h in hits}) == 5 and all(h["video_id"] in store for h in hits)
    assert all(h["rerank_score"] is not None for h in hits[:2]) and all(h["rerank_score"] is None for h in hits[2:])
    assert hits[0]["rerank_score"] >= hits[1]["rerank_score"]  # the re-ranked head is in re-rank score order
    tail = [h["dual_score"] for h in hits[2:]]
    assert tail == sorted(tail, reverse=True)
    for h in hits:
        frames = np.array(h["frames"])
        assert frames.shape == (N_CLIPS, T) and frames.min() >= 0 and frames.max() < store.n_stored(h["video_id"])
    assert set(out["timings_ms"]) == {"encode", "search", "rerank", "total"} and out["timings_ms"]["total"] > 0
    assert out["encode_batch"] >= 1


@pytest.mark.slow
def test_default_rerank_and_k_clamped_to_the_gallery(service):
    port, store, _ = service
    out = json.loads(_get(port, "/search?q=blue&k=1000")[2])
    assert out["rerank"] == 2 and len(out["hits"]) == len(store)  # --rerank 2; 8 videos in the gallery


@pytest.mark.slow
def test_concurrent_queries_are_encoded_in_batches(service):
    port, _, _ = service
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for _ in range(3):  # batching depends on arrival times: a few rounds
            outs = list(pool.map(lambda i: json.loads(_get(port, f"/search?q=shape+{i}&k=2&rerank=0")[2]), range(16)))
            assert [o["query"] for o in outs] == [f"shape {i}" for i in range(16)]
            if max(o["encode_batch"] for o in outs) > 1:
                return
    pytest.fail("16 concurrent queries were never encoded together")


@pytest.mark.slow
def test_frames_are_the_stored_jpeg_bytes(service):
    port, store, _ = service
    nested = next(v for v in store.ids() if v.startswith("cam_a/"))
    last = store.n_stored(nested) - 1
    for video_id, index in ((nested, 0), (nested, last), (store.ids()[-1], 1)):
        status, ctype, body = _get(port, f"/frames/{video_id}/{index}.jpg")
        assert (status, ctype) == (200, "image/jpeg")
        assert body == store.get_jpeg(video_id, [index])[0]


@pytest.mark.slow
@pytest.mark.parametrize("path, status, message", [
    ("/search", 400, "empty query"),
    ("/search?q=", 400, "empty query"),
    ("/search?q=+++", 400, "empty query"),
    (f"/search?q={'x' * (MAX_QUERY_CHARS + 1)}", 400, f"at most {MAX_QUERY_CHARS}"),
    ("/search?q=red&k=0", 400, "k must be in 1..1000, got 0"),
    ("/search?q=red&k=1001", 400, "k must be in 1..1000, got 1001"),
    ("/search?q=red&k=-1", 400, "k must be in 1..1000"),
    ("/search?q=red&k=ten", 400, "k must be an integer, got 'ten'"),
    ("/search?q=red&k=2.5", 400, "k must be an integer"),
    ("/search?q=red&rerank=-1", 400, "rerank must be in 0..100"),
    ("/search?q=red&rerank=101", 400, "rerank must be in 0..100"),
    ("/search?q=red&rerank=x", 400, "rerank must be an integer"),
    ("/?q=", 400, "empty query"),
    ("/?q=red&k=0", 400, "k must be in 1..1000"),
    ("/frames/no_such_video/0.jpg", 404, "no video 'no_such_video'"),
    ("/frames/cam_a/no_such_video/0.jpg", 404, "no video 'cam_a/no_such_video'"),
    ("/frames/%2e%2e/%2e%2e/etc/passwd/0.jpg", 400, "invalid video id '../../etc/passwd'"),
    ("/frames/cam_a/%2e%2e/%2e%2e/store.json/0.jpg", 400, "invalid video id"),
    ("/frames/%2Fetc%2Fpasswd/0.jpg", 400, "invalid video id"),
    ("/frames/../../etc/passwd/0.jpg", 400, "invalid video id"),
    ("/frames/{v}/99999.jpg", 404, "frame index of '{v}' must be in 0.."),
    ("/frames/{v}/-1.jpg", 404, "must be in 0.."),
    ("/frames/{v}/one.jpg", 400, "must be an integer, got 'one'"),
    ("/frames/{v}/1.5.jpg", 400, "must be an integer"),
    ("/frames/{v}/0.png", 404, "Not Found"),
    ("/no/such/route", 404, "Not Found"),
])
def test_bad_input_is_a_4xx_with_a_one_line_json_reason(service, path, status, message):
    port, store, _ = service
    video_id = next(v for v in store.ids() if v.startswith("cam_a/"))
    got, ctype, body = _get(port, path.replace("{v}", video_id))
    assert (got, ctype) == (status, "application/json"), body[:300]
    out = json.loads(body)
    assert list(out) == ["error"] and "\n" not in out["error"]
    assert message.replace("{v}", video_id) in out["error"]


# ------------------------------------------------------------------------------------------- the page
@pytest.fixture
def browser():
    """Headless Debian Chromium driven by its chromedriver (no browser download)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        missing = f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        if os.environ.get("CLIPBERT_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_page_in_headless_chromium(service, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port, store, _ = service
    browser.get(f"http://127.0.0.1:{port}/")
    assert browser.find_elements(By.CSS_SELECTOR, "li.hit") == []  # no query yet: just the form
    browser.find_element(By.ID, "q").send_keys("a green triangle moves up")
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("4")
    browser.find_element(By.ID, "go").click()
    hits = WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"))
    assert browser.find_element(By.TAG_NAME, "h2").text == "a green triangle moves up"
    assert [h.get_attribute("data-rank") for h in hits] == ["1", "2", "3", "4"]
    for hit in hits:
        video_id = hit.get_attribute("data-video-id")
        assert video_id in store
        assert video_id in hit.find_element(By.CSS_SELECTOR, ".video-id").text
        assert hit.find_element(By.CSS_SELECTOR, ".dual").text.startswith("dual ")
        images = hit.find_elements(By.CSS_SELECTOR, ".strip img")
        assert len(images) == N_CLIPS * T
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"))
    widths = browser.execute_script(
        "return Array.from(document.querySelectorAll('.strip img')).map(i => i.naturalWidth)")
    assert len(widths) == 4 * N_CLIPS * T and min(widths) > 0  # every frame loaded and decoded
    shot = tmp_path / "results_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
