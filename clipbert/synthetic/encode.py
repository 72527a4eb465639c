"""Deterministic video encoding with PyAV: write_video for any frames, encode_spec / encode_all for corpus videos.

Encoders run single-threaded and mux bit-exact, so the same frames always give the same bytes, whatever the number
of worker processes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import av
import numpy as np

from clipbert.synthetic.pixels import RGB332_PALETTE, rgb_to_rgb332, rgb_to_yuv420p
from clipbert.synthetic.render import gif_palette, iter_gif_frames, iter_yuv_frames
from clipbert.synthetic.world import EXTENSION_CODECS, VideoSpec

logger = logging.getLogger(__name__)

CODEC_ALIASES = {
    "h264": "libx264", "x264": "libx264", "vp9": "libvpx-vp9", "av1": "libsvtav1", "svtav1": "libsvtav1",
}
# Encoder defaults, all single-threaded. x264's MB-tree rate control reads uninitialised lookahead memory,
# which makes its bytes depend on the heap contents; mbtree=0 keeps same frames -> same bytes.
ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "veryfast", "crf": "23", "x264-params": "mbtree=0"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0", "row-mt": "0"},
    "libsvtav1": {"preset": "10", "crf": "35", "svtav1-params": "lp=1"},
    "mpeg4": {"qscale": "4"},
    "gif": {},
}


def _resolve_codec(path: Path, codec: str | None) -> str:
    if codec is None:
        ext = path.suffix.lstrip(".").lower()
        if ext not in EXTENSION_CODECS:
            raise ValueError(f"cannot pick a codec for extension {ext!r}; pass codec=")
        return EXTENSION_CODECS[ext]
    return CODEC_ALIASES.get(codec, codec)


def write_video(path: str | Path, frames: np.ndarray | Iterable[np.ndarray], fps: int, codec: str | None = None,
                *, input_format: str = "rgb24", palette: np.ndarray | None = None, faststart: bool = False,
                options: dict[str, str] | None = None) -> Path:
    """Encode frames into a video file with PyAV, deterministically (one thread, bit-exact muxing).

    Colour conversion happens in numpy (BT.601 limited range for YUV, a fixed 3-3-2 palette for GIF from RGB),
    never in swscale, so the same frames always give the same bytes.

    Args:
        path: output file; the container follows the extension (.mp4, .webm, .gif, .mkv, .avi, ...).
        frames: uint8 (T, H, W, 3) RGB frames or an iterable of (H, W, 3) frames; with input_format="yuv420p",
            (H*3/2, W) planar YUV 4:2:0 frames; with input_format="pal8", (H, W) palette indices.
            YUV codecs (H.264, VP9, AV1, MPEG-4) need even H and W.
        fps: frames per second (an integer; GIF stores whole-centisecond delays, so use a divisor of 100).
        codec: "libx264"/"h264", "libvpx-vp9"/"vp9", "libsvtav1"/"av1", "gif", "mpeg4" or any PyAV
            encoder that takes yuv420p; None picks one from the extension.
        input_format: "rgb24", "yuv420p" or "pal8" (GIF only, with `palette`).
        palette: ARGB (256, 4) uint8 palette for pal8 frames.
        faststart: for mp4/mov, put the moov atom before the media data.
        options: extra encoder options, merged over the defaults of ENCODER_OPTIONS.

    Returns:
        The path written.
    """
    path = Path(path)
    codec = _resolve_codec(path, codec)
    if input_format == "pal8" and (palette is None or codec != "gif"):
        raise ValueError("input_format='pal8' needs codec='gif' and a palette")
    opts = {**ENCODER_OPTIONS.get(codec, {}), **(options or {})}
    fmt_opts = {"fflags": "+bitexact"}
    if faststart:
        fmt_opts["movflags"] = "+faststart"
    av_frames = (_to_av_frame(f, codec, input_format, palette) for f in frames)
    first = next(av_frames, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=fmt_opts) as container:
        stream = container.add_stream(codec, rate=fps, options=opts)
        stream.width, stream.height, stream.pix_fmt = first.width, first.height, first.format.name
        stream.codec_context.thread_count = 1
        for frame in itertools.chain([first], av_frames):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _to_av_frame(frame: np.ndarray, codec: str, input_format: str, palette: np.ndarray | None) -> av.VideoFrame:
    frame = np.ascontiguousarray(frame)
    if codec == "gif":
        if input_format == "rgb24":
            frame, palette = rgb_to_rgb332(frame), RGB332_PALETTE
        elif input_format != "pal8":
            raise ValueError(f"GIF frames must be rgb24 or pal8, got {input_format!r}")
        return av.VideoFrame.from_ndarray((frame, palette), format="pal8")
    if input_format == "rgb24":
        frame = rgb_to_yuv420p(frame)
    elif input_format != "yuv420p":
        raise ValueError(f"{codec} frames must be rgb24 or yuv420p, got {input_format!r}")
    return av.VideoFrame.from_ndarray(frame, format="yuv420p")


def encode_spec(spec: VideoSpec, videos_dir: str | Path) -> Path:
    """Render and encode one video into videos_dir; returns its path."""
    path = Path(videos_dir) / spec.filename
    if spec.ext == "gif":
        return write_video(path, iter_gif_frames(spec), spec.fps, "gif", input_format="pal8",
                           palette=gif_palette(spec))
    return write_video(path, iter_yuv_frames(spec), spec.fps, spec.codec, input_format="yuv420p")


def _encode_job(args: tuple[VideoSpec, str]) -> str:
    spec, videos_dir = args
    return str(encode_spec(spec, videos_dir))


def encode_all(specs: Sequence[VideoSpec], videos_dir: Path, workers: int = 1) -> None:
    """Encode every spec, in worker processes when workers > 1 (the bytes do not depend on it)."""
    jobs = [(s, str(videos_dir)) for s in specs]
    step = max(1, len(jobs) // 10)
    if workers <= 1:
        _drain(map(_encode_job, jobs), len(jobs), step)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        _drain(pool.map(_encode_job, jobs, chunksize=4), len(jobs), step)


def _drain(results: Iterable[str], total: int, step: int) -> None:
    for i, _ in enumerate(results, 1):
        if i % step == 0 or i == total:
            logger.info("encoded %d/%d videos", i, total)
