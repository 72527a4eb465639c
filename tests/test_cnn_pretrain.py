"""clipbert.training.cnn_pretrain and jobs/pretrain_cnn.py: event labels of stored frames, and the pretrained CNN's round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clipbert.model.checkpoint import build_model
from clipbert.training.cnn_pretrain import ATTRIBUTE_NAMES, event_store_ranges, load_corpus_videos, pretrain_cnn, sample_clip
from clipbert.data.frames import FrameStore
from clipbert.synthetic.vocabulary import ATTRIBUTES
from jobs import pretrain_cnn as job

VIDEO = {"video_id": "v", "fps": 30, "event_frames": [[0, 111], [111, 223]],
         "events": [{"color": "red", "shape": "circle", "direction": "left"},
                    {"color": "blue", "shape": "cross", "direction": "up"}]}


def test_event_ranges_map_source_frames_to_stored_frames():
    # stored at 4 fps: frame 14 shows t = 3.5 s (source frame 105 < 111), frame 15 t = 3.75 s (source 112.5)
    assert event_store_ranges(VIDEO, n_stored=30, stored_fps=4.0) == [(0, 14), (15, 29)]
    assert event_store_ranges(VIDEO, n_stored=28, stored_fps=4.0)[1] == (15, 27)  # clipped to the store


def test_sampled_clips_stay_inside_their_event_and_carry_its_labels():
    rng = np.random.default_rng(0)
    ranges = event_store_ranges(VIDEO, 30, 4.0)
    seen = set()
    for _ in range(200):
        clip = sample_clip(VIDEO, 30, 4.0, frames_per_clip=2, rng=rng)
        event = 0 if clip.labels == tuple(ATTRIBUTES[n].index(VIDEO["events"][0][n]) for n in ATTRIBUTE_NAMES) else 1
        lo, hi = ranges[event]
        assert lo <= min(clip.frame_indices) <= max(clip.frame_indices) <= hi
        assert max(clip.frame_indices) - min(clip.frame_indices) <= 3  # a 1-second window at 4 fps
        seen.add(event)
    assert seen == {0, 1}
    assert sample_clip(VIDEO, 30, 4.0, 2, np.random.default_rng(5)) == sample_clip(VIDEO, 30, 4.0, 2,
                                                                                   np.random.default_rng(5))


def test_an_event_without_stored_frames_gives_no_clip():
    short = {**VIDEO, "event_frames": [[0, 1], [1, 2]]}  # 2 source frames: nothing stored inside event 0 at 4 fps
    assert event_store_ranges(short, n_stored=1, stored_fps=4.0)[1] == (1, 0)
    clips = [sample_clip(short, 1, 4.0, 2, np.random.default_rng(s)) for s in range(20)]
    assert None in clips


def test_pretrained_cnn_loads_through_init_checkpoint(tiny_corpus, tmp_path):
    cfg = tiny_corpus.config()
    out = tmp_path / "cnn"
    metrics = pretrain_cnn(cfg.model, tiny_corpus.root, tiny_corpus.frames, out, max_steps=3, batch_size=4,
                              eval_clips=8, log_every=1)
    assert metrics["steps"] == 3 and metrics["held_out_split"] == "val"
    assert set(metrics["accuracy_after"]) == set(ATTRIBUTE_NAMES)
    assert json.loads((out / "pretrain_metrics.json").read_text())["steps"] == 3
    saved = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("cnn.resnet.") for k in saved) and any(k.startswith("cnn.grid_encoder.") for k in saved)
    model, reports = build_model(tiny_corpus.config("synthetic_tiny", f"model.init_checkpoint={out}").model)
    assert sorted(reports[0].loaded) == sorted(saved) and not reports[0].unexpected
    assert not any(k.startswith("cnn.") for k in reports[0].missing)  # only the transformer side is left random
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    fresh, _ = build_model(cfg.model)
    assert not all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())  # it trained


def test_videos_missing_from_the_store_are_skipped_and_an_empty_train_split_is_an_error(tiny_corpus, tmp_path):
    corpus = json.loads((tiny_corpus.root / "corpus.json").read_text())
    corpus["videos"].append({**corpus["videos"][0], "video_id": "not_stored"})
    (tmp_path / "corpus.json").write_text(json.dumps(corpus))
    store = FrameStore(tiny_corpus.frames)
    by_split = load_corpus_videos(tmp_path, store)
    assert "not_stored" not in {v["video_id"] for vs in by_split.values() for v in vs}
    assert len(by_split["train"]) == len(tiny_corpus.train_ids)
    corpus["videos"] = [v for v in corpus["videos"] if v["split"] != "train"]
    (tmp_path / "corpus.json").write_text(json.dumps(corpus))
    with pytest.raises(ValueError, match="no train video"):
        load_corpus_videos(tmp_path, store)


def test_job_rejects_a_missing_corpus_and_a_bad_config_key(tiny_corpus, tmp_path, capfd):
    assert job.main(["--corpus", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2
    assert "no corpus.json at" in capfd.readouterr().err
    assert job.main(["--corpus", str(tiny_corpus.root), "--output", str(tmp_path / "o"),
                              "--set", "model.no_such_key=1"]) == 2
    assert "no_such_key" in capfd.readouterr().err
    assert not (tmp_path / "o").exists()
