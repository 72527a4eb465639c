"""Tests of clipbert/training/pretraining.py (image-text pretraining: caption groups, MLM masking, batches, loss, evaluation),
its model heads, and a pretraining checkpoint initialising finetuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipbert.training import run as training
from clipbert.model.checkpoint import build_model, save_checkpoint
from clipbert.config import config_to_dict, load_config
from clipbert.data.annotations import Row, load_annotations
from clipbert.training.evaluation import evaluate, metric_names
from clipbert.model.optim import build_optimizer
from clipbert.training.preflight import InputError, check_init_checkpoint
from clipbert.training.pretraining import (
    IGNORE,
    METRICS,
    group_captions,
    make_pretrain_batch,
    mask_tokens,
    pretrain_loss,
)
from clipbert.data.text import load_tokenizer


def _cfg(root, *overrides: str):
    return load_config("synthetic_tiny_pretrain", [f"data.root={root}", "optim.batch_size=8", *overrides])


def _row(image: str, caption: str) -> Row:
    return Row(example_id=0, video_id=image, texts=[caption], label=1, answer_type="", answer="")


def _batch(cfg, rows, seed=0, train=True):
    pool = (np.array([r["video_id"] for r in rows for _ in r["texts"]]), np.array([t for r in rows for t in r["texts"]]))
    columns = {k: [r[k] for r in rows] for k in ("example_id", "video_id", "texts")}
    return make_pretrain_batch(columns, cfg=config_to_dict(cfg), train=train, negatives=pool, seed=seed)


# --------------------------------------------------------------------------------------------- groups
def test_group_captions_chunks_each_image_and_pads_only_in_training():
    rows = [_row("a", "a1"), _row("b", "b1"), _row("a", "a2"), _row("a", "a3")]
    train = group_captions(rows, 2, np.random.default_rng(0))
    assert [(r["video_id"], len(r["texts"])) for r in train] == [("a", 2), ("a", 2), ("b", 2)]
    assert train[0]["texts"] == ["a1", "a2"] and train[1]["texts"][0] == "a3"
    assert train[1]["texts"][1] in {"a1", "a2", "a3"} and train[2]["texts"] == ["b1", "b1"]
    assert [r["example_id"] for r in train] == [0, 1, 2]
    held_out = group_captions(rows, 2)
    assert [r["texts"] for r in held_out] == [["a1", "a2"], ["a3"], ["b1"]]


# --------------------------------------------------------------------------------------------- masking
def test_mask_tokens_follows_berts_80_10_10_rule_on_real_tokens_only():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 100, size=(4000, 12))
    ids[:, 0], ids[:, -3] = 2, 3  # [CLS] ... [SEP]
    mask = np.ones_like(ids)
    mask[:, -2:] = 0
    ids[:, -2:] = 0  # [PAD]
    rows = np.arange(4000) % 4 != 0  # every 4th text is left alone
    out, labels = mask_tokens(ids, mask, np.random.default_rng(1), 0.15, 4, 100, [0, 1, 2, 3, 4], rows)
    picked = labels != IGNORE
    assert not picked[~rows].any() and not picked[:, [0, -3, -2, -1]].any()
    assert np.array_equal(labels[picked], ids[picked])
    assert picked[rows][:, 1:-3].mean() == pytest.approx(0.15, abs=0.005)
    assert (out[picked] == 4).mean() == pytest.approx(0.8, abs=0.02)
    kept = (out[picked] == ids[picked]).mean()  # 10% kept, plus random draws that hit the same id
    assert kept == pytest.approx(0.1 + 0.1 / 100, abs=0.015)
    assert np.array_equal(out[~picked], ids[~picked])


# --------------------------------------------------------------------------------------------- batches
def test_pretrain_batch_pairs_images_with_their_captions_or_others(tiny_stills):
    cfg = _cfg(tiny_stills)
    task = training.prepare_task(cfg)
    captions = {}
    for r in load_annotations(cfg.data.train_file)[0]:
        captions.setdefault(r["video_id"], set()).add(r["texts"][0])
    rows = task.train[:8]
    batch = _batch(cfg, rows, seed=3)
    b, k, length = batch["input_ids"].shape
    assert (b, k, length) == (8, 2, cfg.data.max_txt_len)
    assert batch["frames"].shape == (8, 1, 1, 3, cfg.model.img_size, cfg.model.img_size)
    assert batch["itm_labels"].shape == (8, 2) and set(np.unique(batch["itm_labels"])) <= {0, 1}
    tok = load_tokenizer(cfg.data.tokenizer)
    labels = batch["mlm_labels"]
    restored = np.where(labels != IGNORE, labels, batch["input_ids"])  # the captions before masking
    for i, row in enumerate(rows):
        for j in range(k):
            text = tok.decode(restored[i, j], skip_special_tokens=True)
            if batch["itm_labels"][i, j]:
                assert text in captions[row["video_id"]]
            else:
                assert (labels[i, j] == IGNORE).all()  # mismatched captions are not masked
    assert (labels != IGNORE).any()
    assert batch["caption_ids"].shape == (8, cfg.data.max_txt_len)  # each image's own caption, for the ITC loss
    again = _batch(cfg, rows, seed=3)
    assert all(np.array_equal(again[key], batch[key]) for key in batch)


def test_pretraining_loss_trains_both_heads(tiny_stills):
    cfg = _cfg(tiny_stills, "optim.lr=1e-3")
    task = training.prepare_task(cfg)
    torch.manual_seed(0)
    model, _ = build_model(cfg.model)
    batch = {k: torch.from_numpy(v) for k, v in _batch(cfg, task.train[:8], seed=1).items()}
    optimizer = build_optimizer(model, cfg.optim)
    losses = []
    for _ in range(25):
        loss = pretrain_loss(model, cfg, batch)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert any(n.startswith("mlm_head.") for n in grads) and "classifier.weight" in grads
    assert any(n.startswith("cnn.") for n in grads)  # end to end: the pixels' CNN learns too
    assert losses[-1] < 0.5 * losses[0]
    metrics = evaluate(model, cfg, task.val, torch.device("cpu"))
    assert set(metrics) == set(METRICS) == metric_names(cfg, task.val) and 0 <= metrics["itm_acc"] <= 100
    assert metrics == evaluate(model, cfg, task.val, torch.device("cpu"))  # seeded: the same pairs and masks


def test_pretrain_head_rejects_finetuning_models(tiny_corpus):
    model, _ = build_model(tiny_corpus.config().model)
    with pytest.raises(RuntimeError, match="model.head='pretrain'"):
        model.pretrain_logits(torch.zeros(1, 1, 3, 3, 128), torch.ones(1, 1, 4, dtype=torch.long),
                              torch.ones(1, 1, 4, dtype=torch.long), torch.zeros(1, 1, 4, dtype=torch.bool))


# --------------------------------------------------------------------------------------------- into finetuning
def test_pretraining_checkpoint_initialises_the_whole_finetuning_model(tiny_stills, tiny_corpus, tmp_path):
    pre_cfg = _cfg(tiny_stills)
    torch.manual_seed(1)
    pretrained, _ = build_model(pre_cfg.model)
    save_checkpoint(pretrained, pre_cfg, tmp_path / "pre")
    cfg = tiny_corpus.config("synthetic_tiny", f"model.init_checkpoint={tmp_path / 'pre'}")
    check_init_checkpoint(cfg.model.init_checkpoint, cfg)
    model, reports = build_model(cfg.model)
    theirs, ours = pretrained.state_dict(), model.state_dict()
    shared = [k for k in ours if k.startswith(("cnn.", "bert.", "visual_embeddings."))]
    assert shared and all(torch.equal(ours[k], theirs[k]) for k in shared)
    skipped = reports[-1].skipped
    assert "classifier.weight" in skipped and any(k.startswith("mlm_head.") for k in skipped)
    assert any(k.startswith("classifier.0.") for k in reports[-1].missing)  # the task head starts afresh


def test_init_checkpoint_of_another_model_size_is_refused_naming_the_keys(tiny_stills, tiny_corpus, tmp_path):
    other = _cfg(tiny_stills, "model.hidden_size=64", "model.intermediate_size=128", "model.embed_dim=32")
    model, _ = build_model(other.model)
    save_checkpoint(model, other, tmp_path / "small")
    cfg = tiny_corpus.config("synthetic_tiny", f"model.init_checkpoint={tmp_path / 'small'}")
    pattern = r"model.init_checkpoint: .*small: \d+ tensors do not fit this model .*bert\.embeddings.* vs model"
    with pytest.raises(InputError, match=pattern):
        check_init_checkpoint(cfg.model.init_checkpoint, cfg)
    with pytest.raises(ValueError, match=pattern):
        build_model(cfg.model)


# --------------------------------------------------------------------------------------------- bad input
def test_caption_file_with_bad_lines_and_unknown_images_keeps_the_good_ones(tiny_stills, tmp_path):
    good = (tiny_stills / "txt" / "pretrain_train.jsonl").read_text().splitlines()
    lines = good[:6] + ["{not json", json.dumps({"coco_id": "image99999", "caption": "a red circle"}),
                        json.dumps({"coco_id": "image00000", "caption": 7}), json.dumps({"coco_id": 5, "caption": "x"})]
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cfg = _cfg(tiny_stills, f"data.train_file={path}")
    rows, report = load_annotations(path, known_video_ids={f"image{i:05d}" for i in range(40)})
    assert report.format_name == "coco_captions" and len(rows) == 6
    assert report.skipped == {"bad_json": 1, "unknown_video": 2, "wrong_type": 1}  # int id 5 is read as "5"
    assert len(training.prepare_task(cfg).train) >= 3


def test_pretrain_job_refuses_a_finetuning_config(tiny_corpus, tmp_path, capsys):
    from jobs import pretrain

    code = pretrain.main(["--config", "synthetic_tiny", "--set", f"data.root={tiny_corpus.root}",
                          "--storage-path", str(tmp_path)])
    assert code == 2
    assert "needs data.task=pretrain" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- on Ray Train
@pytest.mark.slow
def test_pretraining_run_on_ray_train_exports_a_checkpoint_that_finetuning_starts_from(ray_local, tiny_stills,
                                                                                       tiny_corpus, tmp_path):
    cfg = _cfg(tiny_stills, "optim.num_epochs=1", "train.eval_every_steps=6", "train.num_workers=1")
    task = training.prepare_run(cfg, str(tmp_path))
    trainer = training.build_trainer(cfg, task, storage_path=str(tmp_path), name="pre")
    assert set(trainer.datasets["train"].take_batch(8)) >= {"itm_labels", "mlm_labels"}  # the pretraining data stage
    final = training.fit_and_export(cfg, task, storage_path=str(tmp_path), name="pre")
    assert final["metric"] == "mlm_acc" and set(METRICS) <= set(final["val"]) and final["test"] is None
    assert final["last"]["step"] == len(task.train) // 8
    finetune = tiny_corpus.config("synthetic_tiny", f"model.init_checkpoint={tmp_path / 'pre' / 'best'}")
    training.prepare_run(finetune, str(tmp_path / "ft"))  # the driver's checks accept it
    _, reports = build_model(finetune.model)
    assert len(reports[-1].loaded) > 50 and "mlm_head.bias" in reports[-1].skipped
