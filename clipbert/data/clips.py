"""Frame store -> model-ready clips: sampled frame indices, JPEG decode, resize and pad to the model's square input.

The one path from stored frames to the ``frames`` tensor the model takes, used by training batches, evaluation,
the embedding pipeline and search alike. Pixel arithmetic follows the original: the longer side is resized to
``img_size`` (bilinear, upscaling too), the rest zero-padded right/bottom. ``resize_size`` is also the size
arithmetic of stored frames (pipelines/decode.py), which are never upscaled.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipbert.config import Config, SamplingConfig
from clipbert.data.frames import FrameStore
from clipbert.data.sampling import indices_for_config


ROUNDINGS = ("truncate", "nearest")


def resize_size(height: int, width: int, max_side: int, *, upscale: bool, rounding: str) -> tuple[int, int]:
    """(height, width) of a frame resized so that its longer side is ``max_side``, each side at least 1 pixel.

    Args:
        height, width: the frame's size.
        max_side: the longer side after resizing.
        upscale: False keeps frames whose longer side is <= max_side as they are.
        rounding: "truncate": the original's get_resize_size, shorter side ``int(max_side * short / long)``
            (the model input); "nearest": both sides ``round(side * max_side / long)`` (stored frames).
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    longer = max(height, width)
    if not upscale and max_side >= longer:
        return height, width
    if rounding == "nearest":
        scale = max_side / longer
        return max(1, round(height * scale)), max(1, round(width * scale))
    if height >= width:
        return max_side, max(1, int(max_side * (width * 1.0 / height)))
    return max(1, int(max_side * (height * 1.0 / width))), max_side


def resize_and_pad(frames: torch.Tensor, img_size: int, *, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Resize the longer side to img_size (bilinear, align_corners=False, upscaling too) and zero-pad right/bottom.

    Args:
        frames: (..., 3, H, W) RGB, uint8 or float in 0-255, on any device.
        img_size: S, the output side.
        out_dtype: float32 keeps the interpolated values as the original does; uint8 rounds them.

    Returns:
        (..., 3, S, S) tensor of `out_dtype` on the input's device.
    """
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"frames must be (..., 3, H, W), got shape {tuple(frames.shape)}")
    height, width = frames.shape[-2:]
    if height == 0 or width == 0:
        raise ValueError(f"empty frame of size {height}x{width}")
    lead = frames.shape[:-3]
    x = frames.reshape(-1, 3, height, width).float()  # (M, 3, H, W)
    new_h, new_w = resize_size(height, width, img_size, upscale=True, rounding="truncate")
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)  # (M, 3, h, w)
    x = F.pad(x, (0, img_size - new_w, 0, img_size - new_h))  # (M, 3, S, S), zeros right/bottom
    if out_dtype == torch.uint8:
        x = x.round().clamp(0, 255)
    return x.to(out_dtype).reshape(*lead, 3, img_size, img_size)  # (..., 3, S, S)


@functools.lru_cache(maxsize=4)
def open_store(root: str) -> FrameStore:
    """The process's FrameStore for `root` (opened once per process, shards lazily)."""
    return FrameStore(root)


def stored_frames(store: FrameStore, video_id: str, indices: Sequence[int], img_size: int) -> torch.Tensor:
    """Stored frames of one video, decoded, resized and padded to the model's input: uint8 (M, 3, S, S)."""
    frames = store.get(video_id, indices, min_side=img_size)  # (M, H, W, 3)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (M, 3, H, W)
    return resize_and_pad(x, img_size, out_dtype=torch.uint8)  # (M, 3, S, S)


def video_clips(store: FrameStore, video_id: str, cfg: Config, *, train: bool,
                rng: np.random.Generator | None = None, n_clips: int | None = None) -> np.ndarray:
    """The N clips of one video: uint8 (N, T, 3, S, S).

    Args:
        store: the frame store holding the video.
        video_id: a stored video id.
        cfg: the run's Config (sampling.* and model.img_size).
        train: random training clips (needs `rng`) when True, N uniform inference clips when False.
        rng: generator of the training draws.
        n_clips: inference only: N uniform clips instead of ``sampling.inference_n_clips``.
    """
    sampling = cfg.sampling
    if n_clips is not None:
        sampling = _with_inference_clips(sampling, n_clips)
    clips = indices_for_config(sampling, store.n_stored(video_id), store.stored_fps(video_id), train=train, rng=rng)
    n, t = clips.frame_indices.shape
    x = stored_frames(store, video_id, clips.frame_indices.reshape(-1), cfg.model.img_size)  # (N*T, 3, S, S)
    return x.reshape(n, t, *x.shape[1:]).numpy()  # (N, T, 3, S, S)


def inference_indices(store: FrameStore, video_id: str, sampling: SamplingConfig, n_clips: int) -> np.ndarray:
    """Stored-frame indices of the N uniform inference clips of one video (what the index embedded): int64 (N, T)."""
    sampling = _with_inference_clips(sampling, n_clips)
    return indices_for_config(sampling, store.n_stored(video_id), store.stored_fps(video_id), train=False).frame_indices


def video_batch(video_ids: Sequence[str], cfg: Config, *, n_clips: int | None = None) -> np.ndarray:
    """Inference clips of several videos of ``cfg.data.frame_store``: uint8 (B, N, T, 3, S, S)."""
    store = open_store(cfg.data.frame_store)
    return np.stack([video_clips(store, v, cfg, train=False, n_clips=n_clips) for v in video_ids])


def _with_inference_clips(sampling: SamplingConfig, n_clips: int) -> SamplingConfig:
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    return dataclasses.replace(sampling, inference_n_clips=n_clips)
