"""Pixel-format conversions done in numpy (never in swscale), so that the same frames always give the same bytes."""

from __future__ import annotations

import numpy as np


def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YCbCr of RGB values, float32 (..., 3) in (..., 3) out."""
    m = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]],
                 np.float32) / 255.0
    return np.asarray(rgb, np.float32) @ m.T + np.array([16.0, 128.0, 128.0], np.float32)


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (H*3/2, W) planar YUV 4:2:0 (Y, then U, then V, as PyAV lays it out)."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"YUV 4:2:0 needs even frame sizes, got {w}x{h}")
    yuv = rgb_to_yuv(frame)  # (H, W, 3)
    chroma = yuv[..., 1:].reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3))  # (H/2, W/2, 2)
    planes = [yuv[..., 0].ravel(), chroma[..., 0].ravel(), chroma[..., 1].ravel()]
    return np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


RGB332_PALETTE = np.concatenate([
    np.full((256, 1), 255, np.uint8),
    np.stack(np.meshgrid(np.rint(np.arange(8) * 255 / 7), np.rint(np.arange(8) * 255 / 7),
                         np.rint(np.arange(4) * 255 / 3), indexing="ij"), -1).reshape(256, 3).astype(np.uint8),
], axis=1)  # (256, 4) ARGB: 8 red x 8 green x 4 blue levels


def rgb_to_rgb332(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> (H, W) indices into RGB332_PALETTE (nearest level per channel)."""
    f = frame.astype(np.float32)
    r, g, b = (np.rint(f[..., i] * n / 255).astype(np.uint8) for i, n in enumerate((7, 7, 3)))
    return (r * 32 + g * 4 + b).astype(np.uint8)
