"""Tests for clip sampling: tables of bounds, counts, positions, seeds and short videos."""

import numpy as np
import pytest

from clipbert.config import load_config
from clipbert.data.sampling import ClipIndices, clip_length, dense_clips, indices_for_config, sample_clips


@pytest.mark.parametrize("stored_fps, T, clip_fps, expected", [
    (4, 2, 2, 4),   # 1 s clip at 4 stored fps
    (4, 1, 1, 4),   # TGIF: 1 frame at 1 fps spans 1 s
    (4, 2, 1, 8),   # ANet: 2 frames at 1 fps span 2 s
    (1, 2, 2, 1),   # low-fps store: half-up rounding of 1.0
    (1.5, 1, 2, 1),  # 0.75 -> 1
    (0.5, 2, 2, 1),  # never below 1
    (5, 1, 2, 3),   # 2.5 rounds half up to 3
])
def test_clip_length_table(stored_fps, T, clip_fps, expected):
    assert clip_length(stored_fps, T, clip_fps) == expected


@pytest.mark.parametrize("n_clips, T, n_stored", [(8, 2, 40), (1, 1, 40), (4, 3, 10), (16, 2, 5)])
def test_train_bounds_and_shapes(n_clips, T, n_stored):
    rng = np.random.default_rng(0)
    out = sample_clips(n_stored, 4, n_clips=n_clips, frames_per_clip=T, clip_fps=2, mode="train", rng=rng)
    assert isinstance(out, ClipIndices)
    assert out.frame_indices.shape == (n_clips, T) and out.frame_indices.dtype == np.int64
    assert out.clip_starts.shape == (n_clips,)
    assert out.frame_indices.min() >= 0 and out.frame_indices.max() <= n_stored - 1
    clip_len = clip_length(4, T, 2)
    assert np.all(out.clip_starts <= max(n_stored - clip_len, 0))
    assert np.all(np.diff(out.frame_indices, axis=1) >= 0)


def test_train_clip_spans_one_second_first_and_last_frame():
    rng = np.random.default_rng(1)
    out = sample_clips(100, 4, n_clips=50, frames_per_clip=2, clip_fps=2, mode="train", rng=rng)
    # fps=2, T=2: first and last frame of a 1 s window = 4 stored frames -> indices differ by 3
    assert np.all(out.frame_indices[:, 1] - out.frame_indices[:, 0] == 3)
    np.testing.assert_array_equal(out.frame_indices[:, 0], np.floor(out.clip_starts).astype(int))


def test_train_starts_cover_range_independently():
    rng = np.random.default_rng(2)
    out = sample_clips(20, 4, n_clips=2000, frames_per_clip=2, clip_fps=2, mode="train", rng=rng)
    first = out.frame_indices[:, 0]
    assert first.min() == 0 and first.max() == 15  # starts in [0, 20 - 4]
    assert len(np.unique(first)) == 16


def test_segment_spread_puts_one_clip_in_each_nth_of_the_video():
    rng = np.random.default_rng(3)
    starts = np.stack([sample_clips(20, 4, n_clips=2, frames_per_clip=2, clip_fps=2, mode="train", rng=rng,
                                    spread="segment").clip_starts for _ in range(500)])  # (500, 2)
    assert starts[:, 0].min() >= 0 and starts[:, 0].max() <= 8 <= starts[:, 1].min()
    assert starts[:, 1].max() <= 16  # delta = 20 - 4
    assert starts[:, 0].max() > 7 and starts[:, 1].min() < 9  # each segment is covered end to end
    with pytest.raises(ValueError, match="spread must be one of"):
        sample_clips(20, 4, n_clips=2, frames_per_clip=2, clip_fps=2, mode="train", rng=rng, spread="tsn")


def test_seed_determinism():
    def draw(seed):
        return sample_clips(50, 4, n_clips=8, frames_per_clip=2, clip_fps=2, mode="train",
                            rng=np.random.default_rng(seed)).frame_indices
    np.testing.assert_array_equal(draw(7), draw(7))
    assert not np.array_equal(draw(7), draw(8))


def test_train_requires_rng():
    with pytest.raises(ValueError, match="Generator"):
        sample_clips(50, 4, n_clips=2, frames_per_clip=2, clip_fps=2, mode="train")


@pytest.mark.parametrize("n_clips, position, expected_first", [
    (4, "middle", [0, 9, 18, 27]),   # delta = 40 - 4 = 36, starts 36*i/4
    (1, "middle", [12]),             # clip 1 of 3 uniform clips: 36/3
    (1, "first", [0]),
    (3, "first", [0, 12, 24]),       # position only matters for N = 1
])
def test_inference_positions(n_clips, position, expected_first):
    out = sample_clips(40, 4, n_clips=n_clips, frames_per_clip=2, clip_fps=2, mode="inference",
                       position=position)
    np.testing.assert_array_equal(out.frame_indices[:, 0], expected_first)
    np.testing.assert_array_equal(out.frame_indices[:, 1], np.array(expected_first) + 3)


def test_inference_is_deterministic_and_ignores_rng():
    a = sample_clips(33, 4, n_clips=16, frames_per_clip=2, clip_fps=2, mode="inference")
    b = sample_clips(33, 4, n_clips=16, frames_per_clip=2, clip_fps=2, mode="inference",
                     rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a.frame_indices, b.frame_indices)


@pytest.mark.parametrize("mode", ["train", "inference"])
@pytest.mark.parametrize("n_stored, expected", [(1, [[0, 0]]), (2, [[0, 1]]), (3, [[0, 2]])])
def test_short_videos_repeat_last_frame(mode, n_stored, expected):
    out = sample_clips(n_stored, 4, n_clips=1, frames_per_clip=2, clip_fps=2, mode=mode,
                       rng=np.random.default_rng(0), position="first")
    np.testing.assert_array_equal(out.frame_indices, expected)


def test_single_frame_video_many_clips():
    out = sample_clips(1, 4, n_clips=8, frames_per_clip=3, clip_fps=2, mode="train",
                       rng=np.random.default_rng(0))
    assert out.frame_indices.shape == (8, 3) and np.all(out.frame_indices == 0)


@pytest.mark.parametrize("n_stored", [0, -3])
def test_zero_length_video_is_an_error(n_stored):
    with pytest.raises(ValueError, match="frames"):
        sample_clips(n_stored, 4, n_clips=1, frames_per_clip=2, clip_fps=2, mode="inference")
    with pytest.raises(ValueError):
        dense_clips(n_stored)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        sample_clips(10, 4, n_clips=1, frames_per_clip=2, clip_fps=2, mode="eval")
    with pytest.raises(ValueError, match="position"):
        sample_clips(10, 4, n_clips=1, frames_per_clip=2, clip_fps=2, mode="inference", position="last")
    with pytest.raises(ValueError, match="fps"):
        sample_clips(10, 0, n_clips=1, frames_per_clip=2, clip_fps=2, mode="inference")


def test_dense_clips_shapes():
    out = dense_clips(7)
    np.testing.assert_array_equal(out.frame_indices, [[0, 1, 2, 3, 4, 5, 6]])
    out = dense_clips(9, dense_frames=3)
    np.testing.assert_array_equal(out.frame_indices, [[0, 4, 8]])
    out = dense_clips(2, dense_frames=4)  # short video: frames repeat
    np.testing.assert_array_equal(out.frame_indices, [[0, 0, 0, 1]])


def test_indices_for_config():
    cfg = load_config("msrvtt_ret").sampling
    train = indices_for_config(cfg, 60, 4, train=True, rng=np.random.default_rng(0))
    assert train.frame_indices.shape == (8, 2)
    test = indices_for_config(cfg, 60, 4, train=False)
    assert test.frame_indices.shape == (16, 2)
    dense = indices_for_config(load_config("msrvtt_ret", ["sampling.strategy=dense"]).sampling, 60, 4, train=True)
    assert dense.frame_indices.shape == (1, 16)
