"""Tests of clipbert/synthetic/pixels.py: the numpy colour conversion behind deterministic encoding."""

from __future__ import annotations

import numpy as np
import pytest

from clipbert.synthetic.pixels import rgb_to_yuv420p


def test_rgb_to_yuv420p_known_values():
    frame = np.zeros((2, 2, 3), np.uint8)
    frame[:] = (255, 255, 255)
    assert rgb_to_yuv420p(frame).ravel().tolist() == [235, 235, 235, 235, 128, 128]
    frame[:] = (255, 0, 0)
    assert rgb_to_yuv420p(frame).ravel().tolist() == [81, 81, 81, 81, 90, 240]
    with pytest.raises(ValueError, match="even"):
        rgb_to_yuv420p(np.zeros((3, 2, 3), np.uint8))
