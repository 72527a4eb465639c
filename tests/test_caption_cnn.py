"""clipbert.training.caption_cnn: caption bag-of-words targets, the loss, and the pretrained CNN's round trip into a model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from clipbert.training.caption_cnn import (
    CaptionWordModel,
    caption_words,
    pretrain_cnn_on_captions,
    word_loss,
    word_recall,
    word_targets,
)
from clipbert.model.checkpoint import build_model
from clipbert.config import load_config
from clipbert.data.text import load_tokenizer


def _cfg(root, *overrides: str):
    return load_config("synthetic_tiny_pretrain", [f"data.root={root}", *overrides])


def test_caption_words_are_the_distinct_words_of_all_an_images_captions(tiny_stills):
    tok = load_tokenizer(str(tiny_stills / "tokenizer"))
    rows = [{"video_id": "a", "texts": ["a red circle"]}, {"video_id": "a", "texts": ["the circle is red and goes up"]},
            {"video_id": "b", "texts": ["a blue square"]}]
    words = caption_words(rows, tok)
    decoded = {image: set(tok.convert_ids_to_tokens(ids)) for image, ids in words.items()}
    assert decoded == {"a": {"a", "red", "circle", "the", "is", "and", "goes", "up"}, "b": {"a", "blue", "square"}}
    assert all(ids == sorted(ids) for ids in words.values())  # each word once, no [CLS] / [SEP]


def test_word_loss_is_cross_entropy_against_a_uniform_bag_of_words():
    target = word_targets([[1, 3], [2]], vocab_size=5)
    assert torch.allclose(target.sum(1), torch.ones(2)) and target[0, 1] == target[0, 3] == 0.5
    logits = torch.tensor([[0.0, 2.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    log_p = torch.log_softmax(logits, dim=-1)
    expected = (-(log_p[0, 1] + log_p[0, 3]) / 2 - log_p[1, 2]) / 2
    assert torch.allclose(word_loss(logits, target), expected)


def test_the_word_layer_reads_the_max_pooled_grid_and_learns_a_batch(tiny_stills):
    cfg = _cfg(tiny_stills)
    torch.manual_seed(0)
    model = CaptionWordModel(cfg.model)
    frames = torch.randint(0, 256, (4, 3, cfg.model.img_size, cfg.model.img_size)).float()
    assert model(frames).shape == (4, cfg.model.vocab_size)
    words = [[5, 9], [7], [5, 11, 12], [9]]
    target = word_targets(words, cfg.model.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = word_loss(model(frames), target).item()
    for _ in range(40):
        loss = word_loss(model(frames), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    with torch.no_grad():
        assert word_recall(model(frames), words) == 100.0  # every image's words are its top predictions


def test_pretrained_caption_cnn_initialises_image_text_pretraining(tiny_stills, tmp_path):
    cfg = _cfg(tiny_stills)
    metrics = pretrain_cnn_on_captions(cfg, tmp_path / "cnn", max_steps=3, batch_size=8)
    assert metrics["steps"] == 3 and metrics["images"] == 32 and metrics["held_out_images"] == 8
    assert set(metrics["held_out_after"]) == {"word_recall", "word_loss"}
    assert json.loads((tmp_path / "cnn" / "pretrain_metrics.json").read_text())["steps"] == 3
    weights = load_file(str(tmp_path / "cnn" / "model.safetensors"))
    assert weights and all(k.startswith("cnn.") for k in weights)  # the CNN only: the word layer stays behind
    model, _ = build_model(_cfg(tiny_stills, f"model.init_checkpoint={tmp_path / 'cnn'}").model)
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in weights.items())


def test_captions_of_fewer_than_two_stored_images_are_refused(tiny_stills, tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"coco_id": "image00000", "caption": "a red circle"}) + "\n")
    with pytest.raises(ValueError, match="at least two stored images"):
        pretrain_cnn_on_captions(_cfg(tiny_stills, f"data.train_file={one}"), tmp_path / "cnn", max_steps=1)


def test_job_pretrains_on_captions_and_refuses_a_finetuning_config(tiny_stills, tiny_corpus, tmp_path, capfd):
    from jobs import pretrain_cnn as job

    out = tmp_path / "job_cnn"
    assert job.main(["--objective", "captions", "--config", "synthetic_tiny_pretrain", "--set",
                     f"data.root={tiny_stills}", "--output", str(out), "--max-steps", "2", "--batch-size", "4"]) == 0
    assert json.loads((out / "pretrain_metrics.json").read_text())["steps"] == 2
    assert job.main(["--objective", "captions", "--set", f"data.root={tiny_corpus.root}",
                     "--output", str(tmp_path / "no")]) == 2
    assert "needs an image-text pretraining config" in capfd.readouterr().err
    assert job.main(["--output", str(tmp_path / "no")]) == 2  # attributes without --corpus
    assert "needs --corpus" in capfd.readouterr().err
