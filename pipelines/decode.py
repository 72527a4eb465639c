"""Decode one video into stored frames: decord first, PyAV as the fallback, subsample, resize, JPEG-encode."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from typing import Iterator

import av  # before decord: decord loads its own FFmpeg with RTLD_GLOBAL, which would break PyAV's VP9 encoder
import numpy as np
import torch
import torch.nn.functional as F

from clipbert.data.clips import resize_size
from clipbert.data.frames import StoreOptions, encode_jpeg

logger = logging.getLogger(__name__)

DECODE_CHUNK = 16  # stored frames decoded per decord call (bounds memory on long videos)
DECODE_BUDGET_BYTES = 256 << 20  # decoded RGB frames held at once; fewer frames per decord call when they are huge
MAX_SOURCE_PIXELS = 100_000_000  # larger frames are refused: one decoded RGB frame alone would take over 300 MB
STREAM_ABOVE_PIXELS = 4096 * 4096  # larger frames are decoded by PyAV one at a time (decord holds several: GBs)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})  # stills, stored as 1-frame videos (image-text pretraining)
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG: how a still is known when only its bytes are


@dataclasses.dataclass
class DecodedVideo:
    """A video's stored frames and metadata (one manifest row's worth)."""

    jpegs: list[bytes]  # stored frames, JPEG
    stored_fps: float  # stored frame rate
    src_fps: float  # source frame rate
    src_frames: int  # source frames decoded
    width: int  # stored width
    height: int  # stored height
    src_width: int
    src_height: int
    warning: str = ""  # e.g. a truncated file whose decodable part was kept


class DecodeError(Exception):
    """A video that neither decoder could read; the message is the manifest's failure reason."""


def stored_indices(n_src: int, src_fps: float, max_fps: float) -> np.ndarray:
    """Source-frame indices kept when subsampling ``n_src`` frames at ``src_fps`` to ``min(max_fps, src_fps)``.

    Stored frame k shows the source frame nearest to time k / stored_fps; at least one frame is kept.
    """
    stored_fps = min(max_fps, src_fps)
    n_stored = int(np.floor((n_src - 1) * stored_fps / src_fps + 1e-6)) + 1
    return np.minimum(np.rint(np.arange(n_stored) * src_fps / stored_fps).astype(np.int64), n_src - 1)


def resize_frame(frame: np.ndarray, max_side: int) -> np.ndarray:
    """Bilinear downscale of a uint8 (H, W, 3) frame so its longer side is <= max_side.

    Same filter as the original's online resize (``F.interpolate(mode="bilinear", align_corners=False)``,
    no antialiasing), on uint8 so it stays cheap (about 1 ms for 640x360 -> 448x252 on one core).
    """
    h, w = frame.shape[:2]
    size = resize_size(h, w, max_side, upscale=False, rounding="nearest")  # (h', w')
    if size == (h, w):
        return frame
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # (1, 3, h', w')
    return y[0].permute(1, 2, 0).contiguous().numpy()  # (h', w', 3)


@dataclasses.dataclass(frozen=True)
class Probe:
    """What PyAV reads from a container's header and first frame."""

    width: int
    height: int
    rotation: int  # display rotation, degrees counterclockwise (a multiple of 90): phone videos are stored sideways


def decode_video(source: str | bytes, options: StoreOptions) -> DecodedVideo:
    """Decode ``source`` (a local path, or the file's bytes) into stored frames; a still image (JPEG, PNG) becomes a
    1-frame video.

    Rotated videos (display-matrix side data, e.g. portrait phone videos) are decoded by PyAV and turned upright,
    and so are huge frames (streamed one at a time: memory stays under about 1 GB at 8000x8000); frames are picked
    by their timestamps, so variable-frame-rate videos keep their real timing.

    Raises:
        DecodeError: with a readable reason when the video cannot be decoded at all.
    """
    if isinstance(source, str):
        if not os.path.exists(source):
            raise DecodeError("file not found")
        if not os.access(source, os.R_OK):
            raise DecodeError("file cannot be read (permission denied)")
        if os.path.getsize(source) == 0:
            raise DecodeError("empty file (0 bytes)")
    elif len(source) == 0:
        raise DecodeError("empty file (0 bytes)")
    if is_still(source):
        return decode_still(source, options)
    info = probe(source)
    if info is not None and (info.rotation or info.width * info.height > STREAM_ABOVE_PIXELS):
        return _decode_pyav(source, options, info.rotation)  # decord ignores the display matrix
    try:
        return _decode_decord(source, options, info)
    except Exception as decord_error:  # decord raises DECORDError, which is not a RuntimeError
        logger.debug("decord could not decode (%s); trying PyAV", decord_error)
        try:
            return _decode_pyav(source, options)
        except DecodeError:
            raise
        except Exception as pyav_error:
            raise DecodeError(f"not decodable: {_short(pyav_error)} (decord: {_short(decord_error)})") from None


def is_still(source: str | bytes) -> bool:
    """A still image: a path with an image extension, or bytes that start like a JPEG or PNG file."""
    if isinstance(source, str):
        return os.path.splitext(source)[1].lower() in IMAGE_EXTENSIONS
    return source.startswith(IMAGE_MAGIC)


def decode_still(source: str | bytes, options: StoreOptions) -> DecodedVideo:
    """A JPEG or PNG as a 1-frame video at the stored frame rate, turned upright by its EXIF orientation.

    Raises:
        DecodeError: not a readable image, or larger than MAX_SOURCE_PIXELS.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as image:
            if image.width * image.height > MAX_SOURCE_PIXELS:
                raise DecodeError(f"image of {image.width}x{image.height} exceeds {MAX_SOURCE_PIXELS} pixels")
            rgb = np.array(ImageOps.exif_transpose(image).convert("RGB"))  # (H, W, 3), writable
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DecodeError(f"not a readable image: {_short(e)}") from None
    return _encode_frames(iter([rgb]), options.max_fps, options.max_fps, 1, options)


def probe(source: str | bytes) -> Probe | None:
    """Frame size and rotation of the first video stream; None when PyAV cannot read it (the decoders then say why).

    Raises:
        DecodeError: the file has no video stream, or frames larger than MAX_SOURCE_PIXELS.
    """
    try:
        with av.open(source if isinstance(source, str) else io.BytesIO(source), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > MAX_SOURCE_PIXELS:
                raise DecodeError(f"frames of {width}x{height} exceed the limit of {MAX_SOURCE_PIXELS / 1e6:g} "
                                  "megapixels")
            first = next(container.decode(stream), None)
            rotation = 90 * round((first.rotation if first is not None else 0) / 90) % 360
            return Probe(width, height, rotation)
    except DecodeError:
        raise
    except Exception as e:
        logger.debug("PyAV cannot probe (%s)", e)
        return None


def frames_per_call(probe: Probe | None) -> int:
    """Stored frames decoded per decord call: DECODE_CHUNK, fewer when DECODE_BUDGET_BYTES would not hold them."""
    if probe is None or probe.width * probe.height == 0:
        return DECODE_CHUNK
    return int(np.clip(DECODE_BUDGET_BYTES // (probe.width * probe.height * 3), 1, DECODE_CHUNK))


def timed_indices(times: np.ndarray, avg_fps: float, max_fps: float) -> tuple[np.ndarray, float, float]:
    """(source frames kept, source rate, stored rate) of frames presented at ``times`` (seconds).

    Evenly spaced frames (the usual case) keep ``stored_indices`` at the container's ``avg_fps``. Otherwise (a
    variable frame rate) stored frame k is the frame presented nearest to k / stored_fps after the first one, and
    the source rate is the mean rate over the video's span, so stored frames and duration follow the real timing.
    """
    n = len(times)
    span = float(times[-1] - times[0]) if n else 0.0
    src_fps = (n - 1) / span if span > 0 else 0.0
    if n < 3 or not src_fps > 0 or np.all(np.abs(np.diff(times) * src_fps - 1) < 0.25):
        return stored_indices(n, avg_fps, max_fps), avg_fps, min(max_fps, avg_fps)
    stored_fps = min(max_fps, src_fps)
    targets = times[0] + np.arange(int(np.floor(span * stored_fps + 1e-6)) + 1) / stored_fps  # (n_stored,)
    after = np.clip(np.searchsorted(times, targets), 1, n - 1)  # first frame at or after each target
    nearer_before = targets - times[after - 1] <= times[after] - targets
    return np.where(nearer_before, after - 1, after), src_fps, stored_fps


def _decode_decord(source: str | bytes, options: StoreOptions, info: Probe | None = None) -> DecodedVideo:
    import decord

    vr = decord.VideoReader(source if isinstance(source, str) else io.BytesIO(source), num_threads=1)
    n_src, avg_fps = len(vr), float(vr.get_avg_fps())
    if n_src == 0 or not avg_fps > 0:
        raise DecodeError(f"no frames or no frame rate (frames={n_src}, fps={avg_fps})")
    keep, src_fps, stored_fps = timed_indices(vr.get_frame_timestamp(range(n_src))[:, 0], avg_fps, options.max_fps)
    chunk = frames_per_call(info)

    def frames() -> Iterator[np.ndarray]:
        for i in range(0, len(keep), chunk):
            batch = vr.get_batch(keep[i : i + chunk].tolist()).asnumpy()  # (t, H, W, 3)
            if batch.ndim != 4 or batch.shape[-1] != 3:  # decord mis-sizes some odd widths: let PyAV decode
                raise DecodeError(f"decord returned frames of shape {batch.shape}")
            yield from batch

    return _encode_frames(frames(), src_fps, stored_fps, n_src, options)


def _pick_by_time(frames: Iterator[tuple[float, av.VideoFrame]], stored_fps: float) -> Iterator[av.VideoFrame]:
    """Stored frame k: the frame presented nearest to k / stored_fps after the first one (ties: the earlier)."""
    k, prev, t0 = 0, None, None
    for t, frame in frames:
        t0 = t if t0 is None else t0
        t -= t0
        while prev is not None and k / stored_fps < t:  # target k lies between the previous frame and this one
            target = k / stored_fps
            yield prev[1] if target - prev[0] <= t - target else frame
            k += 1
        prev = (t, frame)
    if prev is not None and k / stored_fps <= prev[0] + 1e-6:
        yield prev[1]


def _decode_pyav(source: str | bytes, options: StoreOptions, rotation: int = 0) -> DecodedVideo:
    with av.open(source if isinstance(source, str) else io.BytesIO(source), metadata_errors="ignore") as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        src_fps = float(stream.average_rate or stream.guessed_rate or 0)
        if not src_fps > 0:
            raise DecodeError("no frame rate in the container")
        stored_fps = min(options.max_fps, src_fps)
        state = {"decoded": 0, "error": None}

        def timed() -> Iterator[tuple[float, av.VideoFrame]]:
            try:
                for i, frame in enumerate(container.decode(stream)):
                    state["decoded"] = i + 1
                    yield (frame.time if frame.time is not None else i / src_fps), frame
            except av.error.FFmpegError as e:
                state["error"] = e

        def frames() -> Iterator[np.ndarray]:
            for frame in _pick_by_time(timed(), stored_fps):
                yield np.rot90(frame.to_ndarray(format="rgb24"), k=rotation // 90)  # (H, W, 3), upright

        video = _encode_frames(frames(), src_fps, stored_fps, 0, options)
        video.src_frames = state["decoded"]
        if state["error"] is not None:
            expected = stream.frames or "?"
            if not video.jpegs:
                raise DecodeError(f"not decodable: {_short(state['error'])}")
            video.warning = (
                f"truncated or corrupt: kept {video.src_frames} of {expected} source frames "
                f"({_short(state['error'])})"
            )
        return video


def _encode_frames(
    frames: Iterator[np.ndarray], src_fps: float, stored_fps: float, n_src: int, options: StoreOptions
) -> DecodedVideo:
    jpegs, src_size, size = [], (0, 0), (0, 0)
    for frame in frames:  # (H, W, 3) uint8 RGB
        src_size = (frame.shape[1], frame.shape[0])
        small = resize_frame(frame, options.max_side)
        size = (small.shape[1], small.shape[0])
        jpegs.append(encode_jpeg(small, options.jpeg_quality))
    if not jpegs:
        raise DecodeError("no decodable frames")
    return DecodedVideo(
        jpegs=jpegs, stored_fps=stored_fps, src_fps=src_fps, src_frames=n_src, width=size[0], height=size[1],
        src_width=src_size[0], src_height=src_size[1],
    )


def _short(error: BaseException, limit: int = 160) -> str:
    """A one-line reason: FFmpeg's message without the errno prefix and the file path suffix."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    text = re.sub(r": '[^']*'$", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
