"""Tests of clipbert/training/loop.py (the per-worker loop's thread count and loss); the loop itself runs in
test_train_job.py's Ray Train runs."""

from __future__ import annotations

import pytest
import torch

from clipbert.training import loop as train_loop
from clipbert.data.batches import make_batch
from clipbert.model.checkpoint import build_model
from clipbert.config import config_to_dict
from clipbert.data.annotations import load_annotations


@pytest.mark.parametrize("configured, local_workers, cores, expected", [
    (0, 1, 2, 2),  # one worker on this 2-core machine uses both cores, not Ray's 1 reserved CPU
    (0, 2, 2, 1),
    (0, 3, 2, 1),  # never below one thread
    (0, 4, 16, 4),
    (3, 1, 2, 3),  # an explicit count wins
])
def test_cpu_threads_share_the_node_among_its_workers(monkeypatch, configured, local_workers, cores, expected):
    monkeypatch.setattr(train_loop.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert train_loop.cpu_threads(configured, local_workers) == expected



@pytest.mark.parametrize("one_video", [False, True])
def test_hard_negative_loss_mines_other_videos_of_the_batch(tiny_corpus, one_video):
    cfg = tiny_corpus.config("synthetic_tiny", "optim.itm_hard_negatives=True")
    rows, _ = load_annotations(cfg.data.train_file)
    rows = [rows[0]] * 3 if one_video else rows[:3]
    batch = {k: torch.from_numpy(v) for k, v in make_batch(_columns(rows), cfg=config_to_dict(cfg), train=True,
                                                                  seed=0).items()}
    torch.manual_seed(0)
    model, _ = build_model(cfg.model)
    model.eval()
    calls = []
    model.hard_negative_logits = lambda *a: calls.append(a[5]) or torch.zeros(3, 2, cfg.sampling.train_n_clips, 2)
    loss = train_loop.batch_loss(model, cfg, batch)
    assert torch.isfinite(loss)
    if one_video:
        assert calls == []  # nothing to mine from a batch of one video
    else:
        torch.testing.assert_close(calls[0], torch.eye(3, dtype=torch.bool))  # the same-video mask from video_key




def _columns(rows: list[dict]) -> dict:
    """A Ray Data style column batch of annotation rows."""
    return {k: [r[k] for r in rows] for k in ("example_id", "video_id", "texts", "label")}
