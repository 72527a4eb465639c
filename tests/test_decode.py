"""Tests of single-video decoding (pipelines/decode.py): subsampling arithmetic, resizing, decoders, bad files."""

import numpy as np
import pytest

from clipbert.data.frames import StoreOptions
from pipelines.decode import DecodeError, decode_video, stored_indices


@pytest.mark.parametrize("n_src, src_fps, max_fps, want", [
    (30, 30.0, 4.0, [0, 8, 15, 22]),  # 1 s at 30 fps -> frames nearest to 0, .25, .5, .75 s (rounding half to even)
    (10, 10.0, 4.0, [0, 2, 5, 8]),
    (5, 2.0, 4.0, [0, 1, 2, 3, 4]),  # a source slower than the stored rate keeps every frame
    (1, 30.0, 4.0, [0]),  # a single frame
    (3, 30.0, 4.0, [0]),  # shorter than one stored interval: the first frame only
    (9, 30.0, 4.0, [0, 8]),
])
def test_stored_indices(n_src, src_fps, max_fps, want):
    assert stored_indices(n_src, src_fps, max_fps).tolist() == want


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
    from clipbert.data.frames import decode_jpeg
    from clipbert.synthetic.encode import write_video

    frames = np.zeros((8, 32, width, 3), np.uint8)
    frames[:, :, : width // 2] = (200, 30, 30)
    path = write_video(tmp_path / "narrow.mp4", frames, fps=8)
    video = decode_video(str(path), StoreOptions())
    assert (video.width, video.height) == (width, 32) and len(video.jpegs) == 4
    assert decode_jpeg(video.jpegs[0]).shape == (32, width, 3)


# ------------------------------------------------------------------------------------- unusual and hostile files
def write_timed_video(path, times, *, width=96, height=64, rotation=0):
    """An H.264 mp4 whose frame i is shown at times[i] seconds (a variable frame rate when they are uneven), frame i
    filled with red level 10 + 12 i, its left quarter green; ``rotation``: display rotation, degrees
    counterclockwise."""
    import fractions

    import av

    base = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt, stream.time_base = width, height, "yuv420p", base
        stream.codec_context.time_base, stream.codec_context.thread_count = base, 1
        if rotation:
            stream.set_display_rotation(rotation)
        for i, t in enumerate(times):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0], img[:, : width // 4, 1] = 10 + 12 * i, 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = round(t * 1000), base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def _red_levels(video):
    from clipbert.data.frames import decode_jpeg

    return [int(np.rint((decode_jpeg(j)[:, -8:, 0].mean() - 10) / 12)) for j in video.jpegs]  # source frame index


def test_variable_frame_rate_is_timed_by_timestamps(tmp_path):
    """10 frames at 10 fps, then 10 frames 0.3 s apart: 3.9 s, so 16 stored frames at 4 fps (frame k shown at
    k / 4 s), not the 14 that even spacing at the mean rate would give."""
    times = [i * 0.1 for i in range(10)] + [0.9 + 0.3 * (i + 1) for i in range(10)]
    video = decode_video(write_timed_video(tmp_path / "vfr.mp4", times), StoreOptions(max_fps=4.0))
    assert (len(video.jpegs), video.stored_fps, video.src_frames) == (16, 4.0, 20)
    nearest = [int(np.argmin(np.abs(np.array(times) - k / 4 + 1e-9))) for k in range(16)]
    assert _red_levels(video) == nearest


@pytest.mark.parametrize("times, avg_fps, max_fps, want", [
    (np.arange(30) / 30.0, 30.0, 4.0, stored_indices(30, 30.0, 4.0).tolist()),  # even spacing: unchanged
    (np.round(np.arange(30) / 29.97, 3), 29.97, 4.0, stored_indices(30, 29.97, 4.0).tolist()),  # ms jitter
    (np.array([0.0, 0.1, 0.2, 1.0, 1.1]), 3.6, 2.0, [0, 2, 3]),  # a 0.8 s gap: 0.5 s is nearest to frame 2
    (np.array([5.0, 5.1, 5.2, 6.0, 6.1]), 3.6, 2.0, [0, 2, 3]),  # times count from the first frame
])
def test_timed_indices(times, avg_fps, max_fps, want):
    from pipelines.decode import timed_indices

    assert timed_indices(times, avg_fps, max_fps)[0].tolist() == want


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_phone_video_is_stored_upright(tmp_path, rotation):
    video = decode_video(write_timed_video(tmp_path / "phone.mp4", np.arange(8) / 8, rotation=rotation),
                         StoreOptions())
    from clipbert.data.frames import decode_jpeg

    frame = decode_jpeg(video.jpegs[0]).astype(int)  # the source's green strip is its left quarter
    green = {90: frame[-10:, :, 1], -90: frame[:10, :, 1], 180: frame[:, -10:, 1]}[rotation]  # where it must be
    other = {90: frame[:10, :, 1], -90: frame[-10:, :, 1], 180: frame[:, :10, 1]}[rotation]
    assert (video.width, video.height) == ((96, 64) if rotation == 180 else (64, 96))
    assert green.mean() > 200 and other.mean() < 50


def test_audio_only_file_fails_with_a_reason(tmp_path):
    import av

    with av.open(str(tmp_path / "song.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(DecodeError, match="^no video stream$"):
        decode_video(str(tmp_path / "song.mp4"), StoreOptions())


def _huge_video(path, side: int, n: int) -> str:
    """``n`` frames of side x side, top half light, bottom half dark (planes written directly: no colour math)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4, options={"preset": "ultrafast"})
        stream.width = stream.height = side
        stream.pix_fmt, stream.codec_context.thread_count = "yuv420p", 1
        planes = np.full((side * 3 // 2, side), 128, np.uint8)  # (H*3/2, W) Y then U, V
        planes[: side // 2], planes[side // 2 : side] = 220, 30
        for _ in range(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")))
        container.mux(stream.encode())
    return str(path)


def test_frames_over_the_pixel_limit_are_refused_with_the_reason(tmp_path, monkeypatch):
    from pipelines import decode

    path = _huge_video(tmp_path / "big.mp4", 256, 2)
    monkeypatch.setattr(decode, "MAX_SOURCE_PIXELS", 200 * 200)
    with pytest.raises(DecodeError, match=r"^frames of 256x256 exceed the limit of 0.04 megapixels$"):
        decode_video(path, StoreOptions())


HUGE_DECODE = """
import json, resource, sys
from clipbert.data.frames import StoreOptions, decode_jpeg
from pipelines.decode import decode_video
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
video = decode_video(sys.argv[1], StoreOptions(max_side=448))
frame = decode_jpeg(video.jpegs[0]).astype(int)
print(json.dumps({"growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
                  "stored": [len(video.jpegs), video.width, video.height, video.src_width],
                  "top": frame[:200].mean(), "bottom": frame[-200:].mean()}))
"""


@pytest.mark.slow
def test_huge_frames_are_resized_in_bounded_memory(tmp_path):
    """8000x8000 frames (192 MB each as RGB) are streamed one at a time and resized: decord's batches held 8 GB for
    18 such frames, and over 1.5 GB for two."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from pipelines.decode import Probe, frames_per_call, probe

    path = _huge_video(tmp_path / "huge.mp4", 8000, 2)
    assert probe(path) == Probe(8000, 8000, 0)
    assert (frames_per_call(Probe(7000, 7000, 0)), frames_per_call(Probe(640, 360, 0))) == (1, 16)
    done = subprocess.run([sys.executable, "-c", HUGE_DECODE, path], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["stored"] == [2, 448, 448, 8000]
    assert result["top"] > 180 and result["bottom"] < 60
    assert result["growth_mb"] < 1000, result


def test_unreadable_file_fails_with_a_reason(tmp_path):
    import os

    path = tmp_path / "locked.mp4"
    path.write_bytes(b"\x00" * 64)
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("this user reads files whatever their permissions (root)")
    with pytest.raises(DecodeError, match=r"^file cannot be read \(permission denied\)$"):
        decode_video(str(path), StoreOptions())


@pytest.mark.parametrize("video_id, reason", [
    ("../outside", "video id is not a path inside the input root"),
    ("a/../../b", "video id is not a path inside the input root"),
    ("/etc/passwd", "video id is not a path inside the input root"),
    ("x" * 600, "video id longer than 500 bytes"),
])
def test_ids_that_would_escape_the_store_become_failed_rows(tmp_path, video_id, reason):
    from clipbert.synthetic.encode import write_video
    from pipelines.preprocess import decode_batch

    path = write_video(tmp_path / "v.mp4", np.zeros((4, 32, 32, 3), np.uint8), fps=4)
    rows = decode_batch({"video_id": [video_id, "fine/v"], "source": [str(path)] * 2},
                        options={"max_fps": 4.0, "max_side": 448, "jpeg_quality": 90})
    assert rows["status"] == ["failed", "ok"] and rows["error"][0].startswith(reason)
    assert rows["jpegs"][0] == [] and len(rows["jpegs"][1]) == 4


def test_a_video_that_killed_its_decoding_process_twice_gets_a_failed_row_without_a_third_try(tmp_path):
    from clipbert.synthetic.encode import write_video
    from pipelines.preprocess import DecodeJournal, decode_batch

    path = write_video(tmp_path / "v.mp4", np.zeros((4, 32, 32, 3), np.uint8), fps=4)
    store = str(tmp_path / "store")
    journal = DecodeJournal(store)
    for video_id in ("killer", "killer", "died_once"):  # decodes begun by processes that died before ending them
        journal.begin(video_id)
    rows = decode_batch({"video_id": ["killer", "died_once", "fresh"], "source": [str(path)] * 3},
                        options={"max_fps": 4.0, "max_side": 448, "jpeg_quality": 90}, store=store)
    assert rows["status"] == ["failed", "ok", "ok"]
    assert rows["error"][0] == ("the decoding process died 2 times on this video (a decoder crash or out of "
                                "memory): not tried again")
    assert rows["jpegs"][0] == [] and len(rows["jpegs"][1]) == 4
    assert list(journal.dir.iterdir()) == []  # every decode that ended is forgotten


# ------------------------------------------------------------------------------------------------ stills
@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_a_still_image_is_a_one_frame_video(tmp_path, ext):
    from PIL import Image

    from clipbert.data.frames import decode_jpeg

    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[:, :200] = (200, 40, 40)
    path = tmp_path / f"photo.{ext}"
    Image.fromarray(rgb).save(path)
    for source in (str(path), path.read_bytes()):  # a local path, or bytes known by their magic number
        video = decode_video(source, StoreOptions(max_fps=4.0, max_side=160))
        assert len(video.jpegs) == 1 and (video.width, video.height) == (160, 120)
        assert (video.src_width, video.src_height, video.stored_fps) == (400, 300, 4.0)
        frame = decode_jpeg(video.jpegs[0])
        assert abs(int(frame[60, 20, 0]) - 200) < 8 and frame[60, 140, 0] < 10


def test_exif_rotated_photo_is_stored_upright(tmp_path):
    from PIL import Image

    image = Image.fromarray(np.zeros((100, 200, 3), np.uint8))  # stored landscape
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "phone.jpg", exif=exif)
    video = decode_video(str(tmp_path / "phone.jpg"), StoreOptions(max_fps=4.0, max_side=448))
    assert (video.width, video.height) == (100, 200)  # portrait, as the phone showed it


def test_an_image_file_that_is_not_an_image_fails_with_a_reason(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff" + b"garbage" * 20)
    with pytest.raises(DecodeError, match="not a readable image"):
        decode_video(str(path), StoreOptions())
