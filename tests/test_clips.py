"""Tests for clipbert.data.clips: the pixel path (resize, pad) and frame store -> (N, T, 3, S, S) clips."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipbert.data.clips import open_store, resize_and_pad, resize_size, video_batch, video_clips


def test_resize_and_pad_landscape_and_portrait():
    frames = torch.randint(0, 256, (2, 3, 30, 60), dtype=torch.uint8)  # (T, 3, H, W) landscape
    out = resize_and_pad(frames, 64)
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    expected = F.interpolate(frames.float(), size=(32, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, :, :32], expected)
    assert (out[:, :, 32:] == 0).all()  # bottom padding
    portrait = resize_and_pad(torch.full((3, 100, 33), 200, dtype=torch.uint8), 64)
    # short side int(64 * 33/100) = int(21.12) = 21, padded on the right
    torch.testing.assert_close(portrait[:, :, :21], torch.full((3, 64, 21), 200.0))
    assert (portrait[:, :, 21:] == 0).all()


@pytest.mark.parametrize("size, max_side, want", [
    ((360, 640), 448, (252, 448)),
    ((640, 360), 448, (448, 252)),
    ((240, 320), 448, (240, 320)),  # never upscaled
    ((3, 1000), 100, (1, 100)),  # never zero
])
def test_resize_size_of_stored_frames(size, max_side, want):
    assert resize_size(*size, max_side, upscale=False, rounding="nearest") == want


def test_resize_size_roundings():
    assert resize_size(100, 33, 64, upscale=True, rounding="truncate") == (64, 21)  # int(21.12), as resize_and_pad
    assert resize_size(3, 2, 64, upscale=True, rounding="truncate") == (64, 42)  # int(42.67)
    assert resize_size(3, 2, 64, upscale=True, rounding="nearest") == (64, 43)
    assert resize_size(3, 2, 64, upscale=False, rounding="truncate") == (3, 2)
    with pytest.raises(ValueError, match="rounding"):
        resize_size(3, 2, 64, upscale=True, rounding="floor")


def test_resize_upscales_and_handles_leading_dims():
    small = torch.randint(0, 256, (2, 4, 3, 10, 10), dtype=torch.uint8)
    out = resize_and_pad(small, 64, out_dtype=torch.uint8)
    assert out.shape == (2, 4, 3, 64, 64) and out.dtype == torch.uint8
    same = resize_and_pad(torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), 64)
    assert same.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="3, H, W"):
        resize_and_pad(torch.zeros(4, 10, 10), 64)



def test_video_clips_are_the_uniform_inference_clips(tiny_corpus):
    cfg = tiny_corpus.config()
    store = open_store(cfg.data.frame_store)
    vid = tiny_corpus.val_ids[0]
    clips = video_clips(store, vid, cfg, train=False)
    n, t, s = cfg.sampling.inference_n_clips, cfg.sampling.frames_per_clip, cfg.model.img_size
    assert clips.shape == (n, t, 3, s, s) and clips.dtype == np.uint8
    again = video_batch([vid, vid], cfg)
    assert again.shape == (2, n, t, 3, s, s)
    np.testing.assert_array_equal(again[1], clips)  # inference clips are deterministic


def test_video_clips_n_override_and_training_draws(tiny_corpus):
    cfg = tiny_corpus.config()
    store = open_store(cfg.data.frame_store)
    vid = tiny_corpus.train_ids[0]
    assert video_batch([vid], cfg, n_clips=7).shape[1] == 7
    train = video_clips(store, vid, cfg, train=True, rng=np.random.default_rng(0))
    assert train.shape[0] == cfg.sampling.train_n_clips
    with pytest.raises(ValueError, match="n_clips must be >= 1"):
        video_batch([vid], cfg, n_clips=0)
    with pytest.raises(KeyError, match="not in frame store"):
        video_batch(["no_such_video"], cfg)
