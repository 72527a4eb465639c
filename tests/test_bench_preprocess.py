"""Tests for bench/preprocess.py: its decode limits do the pipeline's decode, no more and no less: they keep the frames
the pipeline stores, pixel for pixel."""

from __future__ import annotations

from pathlib import Path

import av  # PyAV must load before decord: see pipelines/decode.py
import numpy as np
import pytest
from conftest import load_bench

REPO = Path(__file__).resolve().parent.parent


bench = load_bench("preprocess")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    """A 3-second 25 fps H.264 mp4 with B-frames (x264's defaults): a bright square moving over noise."""
    from clipbert.synthetic.encode import write_video

    rng = np.random.default_rng(0)
    background = rng.integers(0, 60, (72, 96, 3), dtype=np.uint8)
    frames = np.repeat(background[None], 75, axis=0)  # (75, 72, 96, 3)
    for i in range(75):
        frames[i, 20:44, i : i + 24] = (220, 40 + 2 * i, 90)
    return str(write_video(tmp_path_factory.mktemp("bench") / "moving.mp4", frames, fps=25))


def test_decode_limits_keep_the_frames_the_pipeline_stores(video):
    from pipelines.decode import decode_video

    stored = decode_video(video, bench.OPTIONS)
    assert (stored.src_frames, len(stored.jpegs)) == (75, 12)  # 3 s at 4 fps: frames at 0, 0.25, ..., 2.75 s
    for name in bench.LIMITS:
        assert bench.REFERENCES[name](video) == (75, 12), name
    assert bench.decode_video_no_ray(video) == (75, 12)
    assert bench.decode_every_frame(video) == (75, 0)


def test_pyav_limit_skips_only_frames_that_are_not_stored(video):
    """Skipping unstored non-reference frames changes no stored pixel: the frames equal decord's."""
    import decord

    from pipelines.decode import timed_indices

    vr = decord.VideoReader(video, num_threads=1)
    keep, _, _ = timed_indices(vr.get_frame_timestamp(range(len(vr)))[:, 0], float(vr.get_avg_fps()), 4.0)
    want = vr.get_batch(keep.tolist()).asnumpy()  # (12, 72, 96, 3)
    got = []
    assert bench.decode_kept_pyav(video, got) == (75, 12)
    assert np.array_equal(np.stack(got), want)


def test_pyav_limit_decodes_fewer_frames_than_decord(video):
    """The video has non-reference frames the PyAV limit does not decode (else it would be no cheaper)."""
    with av.open(video) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        assert sum(1 for _ in container.decode(stream)) < 75
