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

from clipbert.frames import StoreOptions, encode_jpeg

logger = logging.getLogger(__name__)

DECODE_CHUNK = 16  # stored frames decoded per decord call (bounds memory on long videos)


@dataclasses.dataclass
class DecodedVideo:
    """A video's stored frames and metadata (one manifest row's worth)."""

    jpegs: list[bytes]  # stored frames, JPEG
    fps: float  # stored frame rate
    src_fps: float  # source frame rate
    src_frames: int  # source frames decoded
    width: int  # stored width
    height: int  # stored height
    src_width: int
    src_height: int
    warning: str = ""  # e.g. a truncated file whose decodable part was kept


class DecodeError(Exception):
    """A video that neither decoder could read; the message is the manifest's failure reason."""


def stored_indices(n_src: int, src_fps: float, fps: float) -> np.ndarray:
    """Source-frame indices kept when subsampling ``n_src`` frames at ``src_fps`` to ``min(fps, src_fps)``.

    Stored frame k shows the source frame nearest to time k / stored_fps; at least one frame is kept.
    """
    stored_fps = min(fps, src_fps)
    n_stored = int(np.floor((n_src - 1) * stored_fps / src_fps + 1e-6)) + 1
    return np.minimum(np.rint(np.arange(n_stored) * src_fps / stored_fps).astype(np.int64), n_src - 1)


def resized_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the longer side scaled down to ``max_side``; never upscales."""
    scale = max_side / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_frame(frame: np.ndarray, max_side: int) -> np.ndarray:
    """Bilinear downscale of a uint8 (H, W, 3) frame so its longer side is <= max_side.

    Same filter as the original's online resize (``F.interpolate(mode="bilinear", align_corners=False)``,
    no antialiasing), on uint8 so it stays cheap (about 1 ms for 640x360 -> 448x252 on one core).
    """
    h, w = frame.shape[:2]
    size = resized_size(w, h, max_side)
    if size == (w, h):
        return frame
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    y = F.interpolate(x, size=(size[1], size[0]), mode="bilinear", align_corners=False)  # (1, 3, h, w)
    return y[0].permute(1, 2, 0).contiguous().numpy()  # (h, w, 3)


def decode_video(source: str | bytes, options: StoreOptions) -> DecodedVideo:
    """Decode ``source`` (a local path, or the file's bytes) into stored frames.

    Raises:
        DecodeError: with a readable reason when the video cannot be decoded at all.
    """
    if isinstance(source, str):
        if not os.path.exists(source):
            raise DecodeError("file not found")
        if os.path.getsize(source) == 0:
            raise DecodeError("empty file (0 bytes)")
    elif len(source) == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        return _decode_decord(source, options)
    except Exception as decord_error:  # decord raises DECORDError, which is not a RuntimeError
        logger.debug("decord could not decode (%s); trying PyAV", decord_error)
        try:
            return _decode_pyav(source, options)
        except DecodeError:
            raise
        except Exception as pyav_error:
            raise DecodeError(f"not decodable: {_short(pyav_error)} (decord: {_short(decord_error)})") from None


def _decode_decord(source: str | bytes, options: StoreOptions) -> DecodedVideo:
    import decord

    vr = decord.VideoReader(source if isinstance(source, str) else io.BytesIO(source), num_threads=1)
    n_src, src_fps = len(vr), float(vr.get_avg_fps())
    if n_src == 0 or not src_fps > 0:
        raise DecodeError(f"no frames or no frame rate (frames={n_src}, fps={src_fps})")
    keep = stored_indices(n_src, src_fps, options.fps)

    def frames() -> Iterator[np.ndarray]:
        for i in range(0, len(keep), DECODE_CHUNK):
            batch = vr.get_batch(keep[i : i + DECODE_CHUNK].tolist()).asnumpy()  # (t, H, W, 3)
            if batch.ndim != 4 or batch.shape[-1] != 3:  # decord mis-sizes some odd widths: let PyAV decode
                raise DecodeError(f"decord returned frames of shape {batch.shape}")
            yield from batch

    return _encode_frames(frames(), src_fps, min(options.fps, src_fps), n_src, options)


def _decode_pyav(source: str | bytes, options: StoreOptions) -> DecodedVideo:
    with av.open(source if isinstance(source, str) else io.BytesIO(source), metadata_errors="ignore") as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        src_fps = float(stream.average_rate or stream.guessed_rate or 0)
        if not src_fps > 0:
            raise DecodeError("no frame rate in the container")
        stored_fps = min(options.fps, src_fps)
        state = {"decoded": 0, "error": None}

        def frames() -> Iterator[np.ndarray]:
            k = 0  # next stored frame
            try:
                for i, frame in enumerate(container.decode(stream)):
                    state["decoded"] = i + 1
                    if i == round(k * src_fps / stored_fps):
                        k += 1
                        yield frame.to_ndarray(format="rgb24")
            except av.error.FFmpegError as e:
                state["error"] = e

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
        jpegs=jpegs, fps=stored_fps, src_fps=src_fps, src_frames=n_src, width=size[0], height=size[1],
        src_width=src_size[0], src_height=src_size[1],
    )


def _short(error: BaseException, limit: int = 160) -> str:
    """A one-line reason: FFmpeg's message without the errno prefix and the file path suffix."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    text = re.sub(r": '[^']*'$", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
