"""Rendering of a video spec into frames: anti-aliased shapes with fading trails, as RGB, YUV 4:2:0 or GIF indices.

Every frame draws a fading trail behind the moving shape, so the motion direction is visible in a single frame
(ClipBERT mean-pools the frames of a clip and has no temporal position embedding). Frames are produced one at a
time; only the shape's patch is computed per frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from clipbert.synthetic.pixels import rgb_to_yuv
from clipbert.synthetic.vocabulary import COLORS, DIRECTIONS, SHAPES
from clipbert.synthetic.world import Event, VideoSpec

TRAIL_ALPHAS: tuple[float, ...] = (0.5, 0.3, 0.15)  # opacity of the trail copies, nearest first
TRAIL_STEP = 0.3  # distance between trail copies, in shape sizes
SUPERSAMPLE = 4  # anti-aliasing factor of the shape masks
GIF_LEVELS = 127  # palette entries per event colour (blend levels between background and colour)


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Anti-aliased coverage of a shape in a size x size box, float32 in [0, 1]."""
    n = size * SUPERSAMPLE
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1  # (n,) sample centres in [-1, 1]
    y, x = np.meshgrid(c, c, indexing="ij")  # (n, n) each
    if shape == "circle":
        inside = x * x + y * y <= 0.95**2
    elif shape == "square":
        inside = (np.abs(x) <= 0.82) & (np.abs(y) <= 0.82)
    elif shape == "triangle":  # apex up, base at the bottom
        inside = (y <= 0.9) & (np.abs(x) <= 0.95 * (y + 0.95) / 1.85)
    elif shape == "cross":
        inside = ((np.abs(x) <= 0.3) | (np.abs(y) <= 0.3)) & (np.abs(x) <= 0.95) & (np.abs(y) <= 0.95)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    coverage = inside.astype(np.float32).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE)  # (s, ss, s, ss)
    return coverage.mean(axis=(1, 3))  # (s, s)


@dataclass(frozen=True)
class _Track:
    """Pixel path of one event's shape: centre positions at the event's first and last frame."""

    start: tuple[float, float]  # (x, y) centre
    end: tuple[float, float]  # (x, y) centre
    step: tuple[float, float]  # (dx, dy) offset from one trail copy to the next, pointing backwards


def _track(spec: VideoSpec, event: Event) -> _Track:
    s = spec.shape_size
    pad = 0.05 * min(spec.width, spec.height)
    trail = len(TRAIL_ALPHAS) * TRAIL_STEP * s
    dx, dy = DIRECTIONS[event.direction]
    along, across = (spec.width, spec.height) if dx else (spec.height, spec.width)
    lo, hi = pad + s / 2 + trail, along - pad - s / 2  # the trail stays inside the frame
    if hi < lo:
        lo = hi = along / 2
    a0, a1 = (lo, hi) if (dx + dy) > 0 else (along - lo, along - hi)
    c_lo, c_hi = pad + s / 2, across - pad - s / 2
    c = c_lo + event.lane * max(0.0, c_hi - c_lo)
    if dx:
        return _Track(start=(a0, c), end=(a1, c), step=(-dx * TRAIL_STEP * s, 0.0))
    return _Track(start=(c, a0), end=(c, a1), step=(0.0, -dy * TRAIL_STEP * s))


def shape_alpha(height: int, width: int, mask: np.ndarray, centre: tuple[float, float],
               step: tuple[float, float]) -> tuple[int, int, np.ndarray]:
    """Alpha of the shape and its trail over their bounding box, clipped to the frame.

    Returns (y0, x0, alpha (h, w) float32): the box's top-left corner and its combined opacity.
    """
    s = mask.shape[0]
    copies = [(1.0, centre)] + [
        (a, (centre[0] + (k + 1) * step[0], centre[1] + (k + 1) * step[1])) for k, a in enumerate(TRAIL_ALPHAS)
    ]
    corners = [(int(round(cy - s / 2)), int(round(cx - s / 2))) for _, (cx, cy) in copies]
    y0 = max(0, min(c[0] for c in corners))
    x0 = max(0, min(c[1] for c in corners))
    y1 = min(height, max(c[0] for c in corners) + s)
    x1 = min(width, max(c[1] for c in corners) + s)
    transmit = np.ones((max(0, y1 - y0), max(0, x1 - x0)), np.float32)  # (h, w) light passing through
    for (alpha, _), (cy, cx) in zip(copies, corners):
        ty0, tx0, ty1, tx1 = max(cy, y0), max(cx, x0), min(cy + s, y1), min(cx + s, x1)
        if ty1 <= ty0 or tx1 <= tx0:
            continue
        m = mask[ty0 - cy: ty1 - cy, tx0 - cx: tx1 - cx]  # (th, tw) visible part of the copy
        transmit[ty0 - y0: ty1 - y0, tx0 - x0: tx1 - x0] *= 1.0 - alpha * m
    return y0, x0, 1.0 - transmit


def iter_layers(spec: VideoSpec) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Per frame: (event index, y0, x0, alpha (h, w)) of the visible shape over the background."""
    masks = [shape_mask(e.shape, spec.shape_size) for e in spec.events]
    for ev, (start, end) in enumerate(spec.event_frames()):
        track = _track(spec, spec.events[ev])
        span = max(1, end - start - 1)
        for t in range(start, end):
            p = (t - start) / span
            centre = (track.start[0] + p * (track.end[0] - track.start[0]),
                      track.start[1] + p * (track.end[1] - track.start[1]))
            y0, x0, alpha = shape_alpha(spec.height, spec.width, masks[ev], centre, track.step)
            yield ev, y0, x0, alpha


def iter_rgb_frames(spec: VideoSpec) -> Iterator[np.ndarray]:
    """The video's frames as uint8 (H, W, 3) RGB arrays, one at a time."""
    bg = np.full((spec.height, spec.width, 3), spec.background, np.uint8)  # (H, W, 3)
    colors = [np.asarray(COLORS[e.color], np.float32) for e in spec.events]
    for ev, y0, x0, alpha in iter_layers(spec):
        frame = bg.copy()
        h, w = alpha.shape
        blend = spec.background + alpha[..., None] * (colors[ev] - spec.background)  # (h, w, 3)
        frame[y0:y0 + h, x0:x0 + w] = np.rint(blend).astype(np.uint8)
        yield frame


def iter_yuv_frames(spec: VideoSpec) -> Iterator[np.ndarray]:
    """The video's frames as uint8 (H*3/2, W) planar YUV 4:2:0, one at a time.

    Blended directly in YUV (linear in RGB, so equal to rgb_to_yuv420p of iter_rgb_frames up to rounding);
    only the shape's patch is computed per frame.
    """
    H, W = spec.height, spec.width
    bg = rgb_to_yuv(np.full(3, spec.background, np.float32))  # (3,)
    colors = [rgb_to_yuv(np.asarray(COLORS[e.color], np.float32)) for e in spec.events]  # (3,) each
    base = np.concatenate([np.full(H * W, bg[0]), np.full(H * W // 4, bg[1]), np.full(H * W // 4, bg[2])])
    base = np.rint(base).astype(np.uint8)  # (H*W*3/2,) flat Y, U, V planes
    for ev, y0, x0, alpha in iter_layers(spec):
        ey, ex = y0 - y0 % 2, x0 - x0 % 2  # align the patch to the chroma grid
        h2 = (y0 - ey + alpha.shape[0] + 1) // 2 * 2
        w2 = (x0 - ex + alpha.shape[1] + 1) // 2 * 2
        a = np.zeros((h2, w2), np.float32)  # (h2, w2) even-sized patch, inside the (even-sized) frame
        a[y0 - ey: y0 - ey + alpha.shape[0], x0 - ex: x0 - ex + alpha.shape[1]] = alpha
        ac = a.reshape(h2 // 2, 2, w2 // 2, 2).mean(axis=(1, 3))  # (h2/2, w2/2) chroma opacity
        frame = base.copy()
        y_plane = frame[: H * W].reshape(H, W)
        u_plane = frame[H * W: H * W * 5 // 4].reshape(H // 2, W // 2)
        v_plane = frame[H * W * 5 // 4:].reshape(H // 2, W // 2)
        y_plane[ey: ey + h2, ex: ex + w2] = _blend(bg[0], colors[ev][0], a)
        u_plane[ey // 2: ey // 2 + h2 // 2, ex // 2: ex // 2 + w2 // 2] = _blend(bg[1], colors[ev][1], ac)
        v_plane[ey // 2: ey // 2 + h2 // 2, ex // 2: ex // 2 + w2 // 2] = _blend(bg[2], colors[ev][2], ac)
        yield frame.reshape(H * 3 // 2, W)


def _blend(back: float, fore: float, alpha: np.ndarray) -> np.ndarray:
    """uint8 of back + alpha * (fore - back), alpha (h, w) in [0, 1]."""
    return np.clip(np.rint(back + alpha * (fore - back)), 0, 255).astype(np.uint8)


def gif_palette(spec: VideoSpec) -> np.ndarray:
    """ARGB (256, 4) palette: the background, then GIF_LEVELS blends towards each event colour."""
    pal = np.zeros((256, 4), np.uint8)
    pal[:, 0] = 255
    pal[:, 1:] = spec.background
    levels = np.linspace(0.0, 1.0, GIF_LEVELS, dtype=np.float32)[:, None]  # (L, 1)
    for ev, event in enumerate(spec.events):
        color = np.asarray(COLORS[event.color], np.float32)
        rows = spec.background + levels * (color - spec.background)  # (L, 3)
        pal[1 + ev * GIF_LEVELS: 1 + (ev + 1) * GIF_LEVELS, 1:] = np.rint(rows).astype(np.uint8)
    return pal


def iter_gif_frames(spec: VideoSpec) -> Iterator[np.ndarray]:
    """Palette indices (H, W) uint8 for gif_palette(spec), one frame at a time."""
    for ev, y0, x0, alpha in iter_layers(spec):
        idx = np.zeros((spec.height, spec.width), np.uint8)
        h, w = alpha.shape
        level = np.rint(alpha * (GIF_LEVELS - 1)).astype(np.int32)  # (h, w)
        idx[y0:y0 + h, x0:x0 + w] = np.where(level > 0, 1 + ev * GIF_LEVELS + level, 0)
        yield idx
