"""Helpers of the synthetic-corpus tests: a tiny mixed-format corpus, readers of its files, and hand-made specs."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

from clipbert.synthetic.corpus import CorpusInfo, synthesize_corpus
from clipbert.synthetic.render import iter_rgb_frames
from clipbert.synthetic.world import Event, VideoSpec

TINY = dict(min_duration=2.0, max_duration=3.0, sizes=[(64, 48), (64, 96), (80, 80)], fps_choices=[10, 25])


def tiny_mixed_corpus(root: Path) -> CorpusInfo:
    """10 short, small videos (5 train, 2 val, 3 test) in mp4, webm and GIF, seed 5."""
    return synthesize_corpus(root, n_videos=10, seed=5, mixed_formats=True, val_videos=2, test_videos=3, **TINY)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decode_pyav(path: Path) -> tuple[np.ndarray, float]:
    """Every frame of a video as uint8 (T, H, W, 3) RGB, and its average frame rate."""
    with av.open(str(path)) as c:
        rate = float(c.streams.video[0].average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # (T, H, W, 3)
    return frames, rate


def render_frames(spec: VideoSpec) -> np.ndarray:
    """All frames of a video, uint8 (T, H, W, 3) RGB (memory: T*H*W*3 bytes)."""
    return np.stack(list(iter_rgb_frames(spec)))  # (T, H, W, 3)


def two_event_spec(direction: str, **kw) -> VideoSpec:
    """A red square moving ``direction``, then a blue circle moving up (down when the square moves up)."""
    events = (Event("red", "square", direction, 0.5),
              Event("blue", "circle", "up" if direction != "up" else "down", 0.5))
    base = dict(video_id="v", split="train", ext="mp4", width=160, height=120, fps=10, num_frames=20,
                events=events, background=40, shape_size=36)
    return VideoSpec(**{**base, **kw})
