"""Pure, seeded clip sampling: which stored frames make up the N clips of T frames of one video.

Conventions (REFERENCE.md section 2, with the source video fps replaced by the frame store's stored fps F):

- A clip is T frames spanning T / clip_fps seconds, i.e. ``clip_len = max(1, round_half_up(T / clip_fps * F))``
  stored frames; its T frame indices are ``floor(linspace(start, start + clip_len - 1, T))``.
- Training: N independent starts, each uniform in ``[0, n_stored - clip_len]`` (real-valued, as the
  original's ``random.uniform``); clips may overlap. ``spread="segment"`` instead draws start i uniformly in
  the i-th of N equal segments of that range (TSN-style), so the N clips always cover the whole video.
- Inference: N uniform clips, clip i starting at ``(n_stored - clip_len) * i / N``. With N = 1 the
  position is "middle" (clip 1 of 3 uniform clips, the original's retrieval setting) or "first" (start 0, QA).
- Videos shorter than a clip (even a single frame) never fail: indices are clamped to the last frame,
  which repeats it. ``n_stored = 0`` is a ValueError.

Every function returns a ``ClipIndices`` with ``frame_indices`` of shape (N, T), int64, indices into the
stored frames of the video.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

MODES = ("train", "inference")
SPREADS = ("random", "segment")
POSITIONS = ("middle", "first")


class ClipIndices(NamedTuple):
    """Where the clips of one video are."""

    clip_starts: np.ndarray  # (N,) float64: start of each clip, in stored frames
    frame_indices: np.ndarray  # (N, T) int64: stored-frame indices of each clip's frames


def clip_length(stored_fps: float, frames_per_clip: int, clip_fps: float) -> int:
    """Stored frames spanned by one clip: max(1, round_half_up(T / clip_fps * stored_fps))."""
    if stored_fps <= 0 or clip_fps <= 0:
        raise ValueError(f"fps must be positive, got stored_fps={stored_fps}, clip_fps={clip_fps}")
    return max(1, int(math.floor(frames_per_clip / clip_fps * stored_fps + 0.5)))


def _frames_of_clips(starts: np.ndarray, clip_len: int, frames_per_clip: int, n_stored: int) -> np.ndarray:
    """(N,) starts -> (N, T) clamped int64 indices floor(linspace(start, start + clip_len - 1, T))."""
    steps = np.linspace(0.0, clip_len - 1, frames_per_clip)  # (T,)
    positions = starts[:, None] + steps[None, :]  # (N, T)
    return np.clip(np.floor(positions), 0, n_stored - 1).astype(np.int64)


def _check(n_stored: int, n_clips: int, frames_per_clip: int) -> None:
    if n_stored <= 0:
        raise ValueError(f"cannot sample clips from a video with {n_stored} frames")
    if n_clips < 1 or frames_per_clip < 1:
        raise ValueError(f"n_clips and frames_per_clip must be >= 1, got {n_clips}, {frames_per_clip}")


def train_starts(n_stored: int, clip_len: int, n_clips: int, rng: np.random.Generator,
                 spread: str = "random") -> np.ndarray:
    """N real-valued starts in [0, delta], delta = max(n_stored - clip_len, 0): independent and uniform
    ("random", the original), or start i uniform in [delta * i / N, delta * (i + 1) / N] ("segment")."""
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS}, got {spread!r}")
    delta = float(max(n_stored - clip_len, 0))
    if spread == "random":
        return rng.uniform(0.0, delta, size=n_clips)
    return delta * (np.arange(n_clips) + rng.uniform(0.0, 1.0, size=n_clips)) / n_clips


def inference_starts(n_stored: int, clip_len: int, n_clips: int, position: str = "middle") -> np.ndarray:
    """Uniform starts delta * i / N; with N = 1, "middle" = delta / 3 (clip 1 of 3), "first" = 0."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    delta = float(max(n_stored - clip_len, 0))
    if n_clips == 1:
        return np.array([delta / 3.0 if position == "middle" else 0.0])
    return delta * np.arange(n_clips, dtype=np.float64) / n_clips


def sample_clips(
    n_stored: int,
    stored_fps: float,
    *,
    n_clips: int,
    frames_per_clip: int,
    clip_fps: float,
    mode: str,
    rng: np.random.Generator | None = None,
    position: str = "middle",
    spread: str = "random",
) -> ClipIndices:
    """Sample N clips of T frames from a video of `n_stored` stored frames at `stored_fps`.

    Args:
        n_stored: stored frames of the video (> 0).
        stored_fps: frame rate of the stored frames (frames per second).
        n_clips: N, clips to return.
        frames_per_clip: T, frames per clip.
        clip_fps: clip frame rate; a clip spans T / clip_fps seconds.
        mode: "train" (independent random starts; needs `rng`) or "inference" (uniform starts).
        rng: the random generator used in "train" mode.
        position: N = 1 inference clip: "middle" or "first".
        spread: training starts, "random" (independent) or "segment" (one per N-th of the video).

    Returns:
        ClipIndices with clip_starts (N,) and frame_indices (N, T) into the stored frames.
    """
    _check(n_stored, n_clips, frames_per_clip)
    clip_len = clip_length(stored_fps, frames_per_clip, clip_fps)
    if mode == "train":
        if rng is None:
            raise ValueError("train-mode sampling needs an explicit np.random.Generator (rng=...)")
        starts = train_starts(n_stored, clip_len, n_clips, rng, spread)
    elif mode == "inference":
        starts = inference_starts(n_stored, clip_len, n_clips, position)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return ClipIndices(starts, _frames_of_clips(starts, clip_len, frames_per_clip, n_stored))


def dense_clips(n_stored: int, *, dense_frames: int | None = None) -> ClipIndices:
    """The dense baseline: the whole video as ONE clip, frames mean-pooled by the model like any clip.

    Shape convention: frame_indices is (1, M): M = n_stored (every stored frame) when `dense_frames` is
    None, else M = dense_frames indices floor(linspace(0, n_stored - 1, M)) spread over the whole video
    (repeating frames of videos shorter than M), so that every video of a batch has the same M.
    The model input is then frames (B, 1, M, 3, S, S): N = 1 clip of T = M frames.
    """
    _check(n_stored, 1, 1 if dense_frames is None else dense_frames)
    m = n_stored if dense_frames is None else dense_frames
    indices = np.floor(np.linspace(0.0, n_stored - 1, m)).astype(np.int64)  # (M,)
    return ClipIndices(np.zeros(1), indices[None, :])  # (1, M)


def indices_for_config(
    sampling_cfg, n_stored: int, stored_fps: float, *, train: bool, rng: np.random.Generator | None = None
) -> ClipIndices:
    """Dispatch on a SamplingConfig: sparse training/inference clips, or the dense clip (both phases)."""
    s = sampling_cfg
    if s.strategy == "dense":
        return dense_clips(n_stored, dense_frames=s.dense_frames)
    return sample_clips(
        n_stored, stored_fps,
        n_clips=s.train_n_clips if train else s.inference_n_clips,
        frames_per_clip=s.frames_per_clip, clip_fps=s.clip_fps,
        mode="train" if train else "inference", rng=rng, position=s.inference_position, spread=s.train_spread,
    )
