"""Tests for the config schema, presets, inheritance, overrides and dict round trips."""

import dataclasses
import json

import pytest

from clipbert.config import (
    Config,
    ModelConfig,
    config_from_dict,
    config_to_dict,
    list_presets,
    load_config,
    parse_override,
)

PAPER_PRESETS = ["msrvtt_ret", "didemo_ret", "anet_ret", "msrvtt_qa", "msrvtt_mc", "tgif_action",
                 "tgif_transition", "tgif_frameqa"]


def test_all_presets_listed_and_load():
    names = list_presets()
    for name in PAPER_PRESETS + ["tiny_ret", "tiny_qa", "tiny_mc"]:
        assert name in names
        assert isinstance(load_config(name), Config)
    assert not any(n.startswith("_") for n in names)


# REFERENCE.md section 4.1: (txt_len, img, clip fps, T, N_train, agg, bs, accum, epochs, lr)
TABLE = {
    "msrvtt_ret": (20, 448, 2, 2, 8, "lse", 16, 1, 20, 5e-5),
    "didemo_ret": (100, 448, 2, 2, 8, "lse", 8, 4, 20, 5e-5),
    "anet_ret": (100, 448, 1, 2, 4, "lse", 16, 2, 80, 5e-5),
    "msrvtt_qa": (100, 448, 2, 2, 8, "lse", 16, 1, 10, 5e-5),
    "tgif_action": (25, 768, 1, 1, 1, "mean", 16, 1, 15, 5e-5),
    "tgif_transition": (25, 768, 1, 1, 1, "mean", 16, 1, 15, 5e-5),
    "tgif_frameqa": (25, 768, 1, 1, 1, "mean", 16, 1, 15, 5e-5),
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_presets_match_original_configs(name):
    c = load_config(name)
    got = (c.data.max_txt_len, c.model.img_size, c.sampling.clip_fps, c.sampling.frames_per_clip, c.sampling.train_n_clips,
           c.model.consensus, c.optim.batch_size, c.optim.grad_accum_steps, c.optim.num_epochs, c.optim.lr)
    assert got == TABLE[name]
    assert c.optim.betas == (0.9, 0.98) and c.optim.weight_decay == 1e-3 and c.optim.cnn_lr == c.optim.lr
    assert c.model.hidden_size == 768 and c.model.resnet_depths == (3, 4, 6, 3)


def test_task_specific_values():
    assert load_config("msrvtt_qa").model.num_answers == 1500
    assert load_config("tgif_frameqa").model.num_answers == 1540
    assert load_config("msrvtt_ret").sampling.inference_position == "middle"
    assert load_config("msrvtt_qa").sampling.inference_position == "first"
    mc = load_config("msrvtt_mc")
    assert (mc.data.task, mc.model.head) == ("mc", "itm")
    assert load_config("tgif_action").model.head == "mc"


def test_tiny_presets_are_small():
    for name in ["tiny_ret", "tiny_qa", "tiny_mc"]:
        c = load_config(name)
        assert c.model.num_hidden_layers == 2 and 64 <= c.model.hidden_size <= 128
        assert 64 <= c.model.img_size <= 112 and c.model.resnet_layer_type == "basic"


def test_overrides_parse_types():
    c = load_config("tiny_ret", ["optim.lr=1e-4", "model.resnet_depths=[2, 2, 2]", "data.tokenizer=/some/dir",
                                 "train.use_gpu=True", "sampling.clip_fps=3", "model.bert_dir=None"])
    assert c.optim.lr == 1e-4 and isinstance(c.sampling.clip_fps, float) and c.sampling.clip_fps == 3.0
    assert c.model.resnet_depths == (2, 2, 2) and c.data.tokenizer == "/some/dir" and c.train.use_gpu is True
    assert c.model.bert_dir is None
    assert parse_override("data.val_file=a=b.jsonl") == ("data.val_file", "a=b.jsonl")
    assert parse_override("data.tokenizer=2024") == ("data.tokenizer", "2024")  # str field keeps the text
    assert parse_override("model.bert_dir=123") == ("model.bert_dir", "123")
    assert parse_override("model.bert_dir=None") == ("model.bert_dir", None)


@pytest.mark.parametrize("key, nearest", [("optim.lrr", "optim.lr"), ("model.hiden_size", "model.hidden_size"),
                                          ("sampling.num_frame", "sampling.frames_per_clip"),
                                          ("sampling.frame_per_clip", "sampling.frames_per_clip")])
def test_unknown_key_names_nearest(key, nearest):
    with pytest.raises(ValueError, match=rf"unknown config key '{key}'.*'{nearest}'"):
        load_config("tiny_ret", [f"{key}=1"])


def test_bad_values_rejected():
    with pytest.raises(ValueError, match="optim.lr"):
        load_config("tiny_ret", ["optim.lr=fast"])
    with pytest.raises(ValueError, match="consensus"):
        load_config("tiny_ret", ["model.consensus=median"])
    with pytest.raises(ValueError, match="cannot serve"):
        load_config("tiny_ret", ["model.head=qa"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config("tiny_ret", ["optim.lr"])
    with pytest.raises(ValueError, match="no preset"):
        load_config("not_a_preset")


def test_yaml_inheritance(tmp_path):
    child = tmp_path / "mine.yaml"
    child.write_text("base: tiny_ret\noptim: {lr: 3e-4}\nsampling: {train_n_clips: 3}\n")
    grandchild = tmp_path / "deeper.yaml"
    grandchild.write_text("base: mine.yaml\ndata: {max_txt_len: 12}\n")
    c = load_config(str(grandchild))
    tiny = load_config("tiny_ret")
    assert c.optim.lr == 3e-4 and c.sampling.train_n_clips == 3 and c.data.max_txt_len == 12
    assert c.model == tiny.model and c.sampling.frames_per_clip == tiny.sampling.frames_per_clip
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny_ret\nmodel: {hiden_size: 3}\n")
    with pytest.raises(ValueError, match="model.hidden_size"):
        load_config(str(bad))


def test_inheritance_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))


def test_dict_round_trip_through_json():
    c = load_config("tiny_qa", ["optim.lr=2e-4"])
    d = json.loads(json.dumps(config_to_dict(c)))
    assert config_from_dict(d) == c
    with pytest.raises(ValueError, match="unknown config key 'model.nope'"):
        config_from_dict({"model": {"nope": 1}})


def test_num_answers_sync():
    c = load_config("tiny_qa", ["data.num_answers=77"])
    assert c.model.num_answers == 77


def test_every_field_has_a_comment():
    import inspect

    import clipbert.config as mod

    source = inspect.getsource(mod)
    for cls in [ModelConfig] + [f.type for f in dataclasses.fields(Config) if not isinstance(f.type, str)]:
        for f in dataclasses.fields(cls):
            line = next(ln for ln in source.splitlines() if ln.strip().startswith(f"{f.name}:"))
            assert "#" in line, f.name
