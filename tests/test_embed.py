"""Tests for pipelines/embed.py: embeddings equal the model's, failed rows, resume without duplicates, bad input."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import corrupt_frames

from clipbert.data import frames as fs
from clipbert.model.checkpoint import build_model, save_checkpoint
from clipbert.data.clips import video_batch
from clipbert.retrieval.embeddings import read_rows
from clipbert.model.scoring import clip_embeddings
from pipelines.embed import run_embed


@pytest.fixture(scope="module")
def checkpoint(tiny_corpus, tmp_path_factory):
    cfg = tiny_corpus.config()
    torch.manual_seed(0)
    model, _ = build_model(cfg.model)
    return model.eval(), cfg, str(save_checkpoint(model, cfg, tmp_path_factory.mktemp("ckpt")))


def _by_id(out) -> dict:
    return {r["video_id"]: r for r in read_rows(out).to_pylist()}


@pytest.mark.slow
def test_embeddings_equal_the_model_and_resume_adds_the_rest(ray_local, tiny_corpus, checkpoint, tmp_path):
    model, cfg, ckpt = checkpoint
    out = tmp_path / "emb"
    first = run_embed(ckpt, str(tiny_corpus.frames), str(out), video_ids=tiny_corpus.val_ids, n_clips=3)
    assert (first.videos_ok, first.videos_skipped, first.clips) == (len(tiny_corpus.val_ids), 0, 3 * 4)
    second = run_embed(ckpt, str(tiny_corpus.frames), str(out), n_clips=3)  # the whole store: only the rest
    everything = tiny_corpus.train_ids + tiny_corpus.val_ids + tiny_corpus.test_ids
    others = len(tiny_corpus.train_ids) + len(tiny_corpus.test_ids)
    assert (second.videos_ok, second.videos_skipped) == (others, len(tiny_corpus.val_ids))
    ids = read_rows(out, ["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == sorted(everything)  # every video once
    rows = _by_id(out)
    vids = sorted(everything)[:3]
    frames = torch.from_numpy(video_batch(vids, dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, frame_store=str(tiny_corpus.frames))), n_clips=3))
    with torch.no_grad():
        clips, video = clip_embeddings(model, model.encode_grid(frames))
    for i, vid in enumerate(vids):
        assert rows[vid]["status"] == "ok" and rows[vid]["n_clips"] == 3
        np.testing.assert_allclose(np.array(rows[vid]["clip_embeddings"]), clips[i].numpy(), atol=1e-4)
        np.testing.assert_allclose(np.array(rows[vid]["video_embedding"]), video[i].numpy(), atol=1e-4)
    again = run_embed(ckpt, str(tiny_corpus.frames), str(out), n_clips=3)
    assert (again.videos_ok, again.videos_skipped) == (0, len(everything))
    header = json.loads((out / "embed.json").read_text())
    assert header["n_clips"] == 3 and header["embed_dim"] == cfg.model.embed_dim


def test_unreadable_frames_become_a_failed_row(ray_local, tiny_corpus, checkpoint, tmp_path):
    _, _, ckpt = checkpoint
    store = tmp_path / "frames"
    shutil.copytree(tiny_corpus.frames, store)
    bad = tiny_corpus.val_ids[0]
    corrupt_frames(store, bad)
    summary = run_embed(ckpt, str(store), str(tmp_path / "emb"), video_ids=tiny_corpus.val_ids)
    assert (summary.videos_ok, summary.videos_failed) == (len(tiny_corpus.val_ids) - 1, 1)
    assert summary.failures[0][0] == bad
    row = _by_id(tmp_path / "emb")[bad]
    assert row["status"] == "failed" and row["error"] and row["clip_embeddings"] == []


def test_bad_inputs_are_refused_before_any_work(tiny_corpus, checkpoint, tmp_path):
    model, cfg, ckpt = checkpoint
    plain = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, contrastive=False))
    no_heads = save_checkpoint(build_model(plain.model)[0], plain, tmp_path / "plain")
    with pytest.raises(ValueError, match="model.contrastive=true"):
        run_embed(str(no_heads), str(tiny_corpus.frames), str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="missing_store"):
        run_embed(ckpt, str(tmp_path / "missing_store"), str(tmp_path / "b"))
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        run_embed(str(tmp_path), str(tiny_corpus.frames), str(tmp_path / "c"))
    with pytest.raises(ValueError, match="none of the 1 requested videos"):
        run_embed(ckpt, str(tiny_corpus.frames), str(tmp_path / "d"), video_ids=["nope"])
    empty = tmp_path / "empty_store"
    empty.mkdir()
    fs.write_header(empty, fs.StoreOptions())
    fs.write_manifest(empty, fs.MANIFEST_SCHEMA.empty_table())
    with pytest.raises(ValueError, match="empty_store has no successfully stored videos"):
        run_embed(ckpt, str(empty), str(tmp_path / "f"))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "embed.json").write_text(json.dumps({"checkpoint_hash": "0000", "n_clips": 2}))
    with pytest.raises(ValueError, match="checkpoint_hash: directory has 0000"):
        run_embed(ckpt, str(tiny_corpus.frames), str(tmp_path / "e"))
