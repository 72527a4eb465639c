"""Tests of single-video decoding (pipelines/decode.py): subsampling arithmetic, resizing, decoders, bad files."""

import numpy as np
import pytest

from clipbert.frames import StoreOptions
from pipelines.decode import DecodeError, decode_video, resized_size, stored_indices


@pytest.mark.parametrize("n_src, src_fps, fps, want", [
    (30, 30.0, 4.0, [0, 8, 15, 22]),  # 1 s at 30 fps -> frames nearest to 0, .25, .5, .75 s (rounding half to even)
    (10, 10.0, 4.0, [0, 2, 5, 8]),
    (5, 2.0, 4.0, [0, 1, 2, 3, 4]),  # a source slower than the stored rate keeps every frame
    (1, 30.0, 4.0, [0]),  # a single frame
    (3, 30.0, 4.0, [0]),  # shorter than one stored interval: the first frame only
    (9, 30.0, 4.0, [0, 8]),
])
def test_stored_indices(n_src, src_fps, fps, want):
    assert stored_indices(n_src, src_fps, fps).tolist() == want


@pytest.mark.parametrize("size, max_side, want", [
    ((640, 360), 448, (448, 252)),
    ((360, 640), 448, (252, 448)),
    ((320, 240), 448, (320, 240)),  # never upscaled
    ((1000, 3), 100, (100, 1)),  # never zero
])
def test_resized_size(size, max_side, want):
    assert resized_size(*size, max_side) == want


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (bytes(range(256)) * 40, "not decodable"),
])
def test_bad_bytes_fail_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "x.mp4"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        decode_video(str(path), StoreOptions())


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="file not found"):
        decode_video(str(tmp_path / "nope.mp4"), StoreOptions())


@pytest.mark.parametrize("width", [72, 48])
def test_widths_decord_mis_sizes_are_decoded_correctly(tmp_path, width):
    from clipbert.frames import decode_jpeg
    from clipbert.synthetic import write_video

    frames = np.zeros((8, 32, width, 3), np.uint8)
    frames[:, :, : width // 2] = (200, 30, 30)
    path = write_video(tmp_path / "narrow.mp4", frames, fps=8)
    video = decode_video(str(path), StoreOptions())
    assert (video.width, video.height) == (width, 32) and len(video.jpegs) == 4
    assert decode_jpeg(video.jpegs[0]).shape == (32, width, 3)
