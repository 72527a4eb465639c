"""Tests of clipbert/synthetic/render.py: shapes, trails and motion in the rendered pixels, RGB against YUV frames."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_helpers import render_frames, two_event_spec

from clipbert.synthetic.pixels import rgb_to_yuv420p
from clipbert.synthetic.render import iter_rgb_frames, iter_yuv_frames, shape_mask
from clipbert.synthetic.vocabulary import COLORS, DIRECTIONS, SHAPES


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_one_frame_shows_the_direction_and_frames_show_the_motion(direction):
    spec = two_event_spec(direction)
    frames = render_frames(spec)  # (T, H, W, 3)
    assert frames.shape == (20, 120, 160, 3) and frames.dtype == np.uint8
    dx, dy = DIRECTIONS[direction]
    red = np.array(COLORS["red"])
    centres = []
    for frame in frames[:10]:
        strength = np.clip((frame[..., 0].astype(float) - 40) / (red[0] - 40), 0, 1)  # (H, W) opacity
        solid = strength > 0.99
        ys, xs = np.mgrid[:120, :160]
        solid_c = np.array([xs[solid].mean(), ys[solid].mean()])
        faint = (strength > 0.05) & ~solid
        faint_c = np.array([xs[faint].mean(), ys[faint].mean()])
        trail = faint_c - solid_c
        assert trail @ np.array([dx, dy]) < -3  # the trail lies behind the shape
        centres.append(solid_c)
    travel = centres[-1] - centres[0]
    assert travel @ np.array([dx, dy]) > 20


def test_each_shape_is_visible_only_during_its_event():
    frames = render_frames(two_event_spec("left")).astype(int)  # (T, H, W, 3)
    red_px = (frames[..., 0] > 150) & (frames[..., 2] < 100)  # (T, H, W)
    blue_px = (frames[..., 2] > 150) & (frames[..., 0] < 100)
    assert red_px[:10].any(axis=(1, 2)).all() and not red_px[10:].any()
    assert blue_px[10:].any(axis=(1, 2)).all() and not blue_px[:10].any()


@pytest.mark.parametrize("direction", ["left", "down"])
def test_yuv_frames_equal_the_converted_rgb_frames(direction):
    spec = two_event_spec(direction)
    for rgb, yuv in zip(iter_rgb_frames(spec), iter_yuv_frames(spec)):
        assert yuv.shape == (180, 160) and yuv.dtype == np.uint8
        assert np.abs(yuv.astype(int) - rgb_to_yuv420p(rgb).astype(int)).max() <= 2


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_masks_are_distinct_and_large(shape):
    mask = shape_mask(shape, 32)
    assert mask.shape == (32, 32) and 0.0 <= mask.min() and mask.max() <= 1.0
    assert 0.25 * 32 * 32 < mask.sum() < 32 * 32
    for other in SHAPES:
        if other != shape:
            assert np.abs(mask - shape_mask(other, 32)).sum() > 0.1 * 32 * 32
