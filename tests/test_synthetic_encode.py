"""Tests of clipbert/synthetic/encode.py: encoded videos decode to the rendering, write_video, same bytes."""

from __future__ import annotations

import av  # noqa: F401  (PyAV must load before decord: see pipelines/decode.py)
import decord
import numpy as np
import pytest
from synthetic_helpers import decode_pyav, render_frames, tiny_mixed_corpus, two_event_spec

from clipbert.synthetic.corpus import CorpusInfo
from clipbert.synthetic.encode import encode_spec, write_video


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> CorpusInfo:
    return tiny_mixed_corpus(tmp_path_factory.mktemp("corpus"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.mark.parametrize("ext", ["mp4", "webm", "gif"])
def test_encoding_does_not_depend_on_heap_contents(tmp_path, ext):
    spec = two_event_spec("right", ext=ext, width=64, height=64, num_frames=30, shape_size=20)
    rng = np.random.default_rng(0)
    outputs = set()
    for k in range(4):
        junk = [rng.random((int(rng.integers(100, 400)), 300)) for _ in range(5)]  # leave garbage on the heap
        outputs.add(encode_spec(spec, tmp_path / str(k)).read_bytes())
        del junk
    assert len(outputs) == 1


def test_videos_decode_with_expected_length_fps_and_size(corpus):
    for spec in corpus.videos:
        path = corpus.video_path(spec.video_id)
        frames, rate = decode_pyav(path)
        assert frames.shape == (spec.num_frames, spec.height, spec.width, 3), spec.video_id
        assert rate == pytest.approx(spec.fps)
        if spec.ext != "gif":  # decord does not open GIF
            vr = decord.VideoReader(str(path), num_threads=1)
            assert len(vr) == spec.num_frames and vr.get_avg_fps() == pytest.approx(spec.fps, rel=1e-3)
            assert vr[0].shape == (spec.height, spec.width, 3)


def test_decoded_pixels_match_the_rendering(corpus):
    for spec in corpus.videos:
        decoded, _ = decode_pyav(corpus.video_path(spec.video_id))
        assert psnr(decoded, render_frames(spec)) > 30, (spec.video_id, spec.ext)


@pytest.mark.parametrize("name,codec,frames", [
    ("one.mp4", None, 1), ("short.mp4", "h264", 3), ("clip.webm", "vp9", 5), ("clip.gif", "gif", 5),
    ("clip.mp4", "av1", 4), ("clip.avi", "mpeg4", 4),
])
def test_write_video_helper(tmp_path, name, codec, frames):
    rng = np.random.default_rng(0)
    clip = np.repeat(rng.integers(0, 255, (frames, 1, 1, 3), dtype=np.uint8), 64, axis=1)
    clip = np.repeat(clip, 80, axis=2)  # (T, 64, 80, 3) flat colours
    path = write_video(tmp_path / name, clip, fps=10, codec=codec)
    decoded, rate = decode_pyav(path)
    assert decoded.shape == (frames, 64, 80, 3) and rate == pytest.approx(10)
    tolerance = 45 if name.endswith(".gif") else 12  # RGB GIFs use a coarse 3-3-2 palette
    assert np.abs(decoded.astype(int).mean(axis=(1, 2)) - clip[:, 0, 0].astype(int)).max() < tolerance


def test_write_video_faststart_puts_moov_first(tmp_path):
    clip = np.zeros((3, 32, 32, 3), np.uint8)
    late = write_video(tmp_path / "late.mp4", clip, fps=10).read_bytes()
    early = write_video(tmp_path / "early.mp4", clip, fps=10, faststart=True).read_bytes()
    assert late.index(b"moov") > late.index(b"mdat")
    assert early.index(b"moov") < early.index(b"mdat")


def test_write_video_rejects_nothing_and_unknown_extensions(tmp_path):
    with pytest.raises(ValueError, match="at least one frame"):
        write_video(tmp_path / "a.mp4", [], fps=10)
    with pytest.raises(ValueError, match="extension"):
        write_video(tmp_path / "a.xyz", np.zeros((1, 16, 16, 3), np.uint8), fps=10)
