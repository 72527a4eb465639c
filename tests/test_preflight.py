"""Tests of clipbert/training/preflight.py on tiny inputs made here: each check passes a usable input and refuses a
bad one in one line that names the config key, the path and the reason."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch

from clipbert.config import Config, load_config
from clipbert.data.frames import MANIFEST_FILE, SHARDS_DIR, StoreOptions, encode_jpeg, failed_row, ok_row, write_store
from clipbert.data.text import write_vocab
from clipbert.model.checkpoint import save_checkpoint
from clipbert.model.clipbert import ClipBert
from clipbert.training import preflight
from clipbert.training.preflight import (
    ANNOTATION_KEYS,
    REQUIRED_ANNOTATIONS,
    InputError,
    check_frame_store,
    check_init_checkpoint,
    check_inputs,
    check_readable_file,
    check_tokenizer,
    check_weights,
    one_line,
)

OTHER_SIZE = ["model.hidden_size=64", "model.intermediate_size=128", "model.embed_dim=32"]


def _store(root: Path, video_ids: list[str], failed: list[str] = ()) -> Path:
    """A frame store at `root` of 2-frame 16x16 videos, plus failed rows."""
    jpeg = encode_jpeg(np.zeros((16, 16, 3), np.uint8), 90)
    ok = [(ok_row(v, f"{v}.mp4", [jpeg, jpeg], fps=1.0, width=16, height=16, src_fps=25.0, src_width=16,
                  src_height=16, src_frames=50), [jpeg, jpeg]) for v in video_ids]
    return write_store(root, StoreOptions(), ok + [(failed_row(v, f"{v}.mp4", "decode error"), []) for v in failed])


@pytest.fixture
def inputs(tmp_path) -> Config:
    """synthetic_tiny on usable inputs in tmp_path: a frame store of two videos, a tokenizer, train and val files
    (no other annotation file)."""
    cfg = load_config("synthetic_tiny")
    cfg.data.frame_store = str(_store(tmp_path / "frames", ["v1", "v2"], failed=["v3"]))
    cfg.data.tokenizer = str(write_vocab(["a red circle"], tmp_path / "tokenizer"))
    for key in ANNOTATION_KEYS:
        setattr(cfg.data, key, str(tmp_path / f"{key}.jsonl") if key in REQUIRED_ANNOTATIONS else "")
    for key in REQUIRED_ANNOTATIONS:
        Path(getattr(cfg.data, key)).write_text('{"clip_name": "v1", "caption": "a red circle"}\n')
    return cfg


# ------------------------------------------------------------------------------------------ one_line
def test_one_line_joins_lines_and_shortens():
    assert one_line(ValueError("bad\n  value\tin line 3")) == "bad value in line 3"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(ValueError("x" * 400)) == "x" * 297 + "..."
    assert one_line(ValueError("abcdefghijkl"), limit=10) == "abcdefg..."


# ------------------------------------------------------------------------------------------ check_inputs
def test_usable_inputs_pass_and_give_the_store(inputs):
    store = check_inputs(inputs)
    assert store.ids() == ["v1", "v2"]


@pytest.mark.parametrize("key", ["train_file", "val_file"])
def test_a_required_annotation_file_must_be_set(inputs, key):
    setattr(inputs.data, key, "")
    with pytest.raises(FileNotFoundError, match=rf"^data.{key}: no such annotation file: ''$"):
        check_inputs(inputs)


@pytest.mark.parametrize("key", ["test_file", "val_mc_file", "test_mc_file", "ans2label_file"])
def test_an_optional_file_is_checked_once_set(inputs, tmp_path, key):
    setattr(inputs.data, key, str(tmp_path / "gone.json"))
    with pytest.raises(FileNotFoundError, match=rf"^data.{key}: no such annotation file: '.*gone.json'$"):
        check_inputs(inputs)


def test_the_frame_store_is_checked_first(inputs, tmp_path):
    inputs.data.frame_store, inputs.data.tokenizer = str(tmp_path / "no_store"), str(tmp_path / "no_tokenizer")
    with pytest.raises(FileNotFoundError, match="data.frame_store"):
        check_inputs(inputs)


def test_weights_are_checked_with_the_rest(inputs, tmp_path):
    inputs.model.init_checkpoint = str(tmp_path / "gone.pt")
    with pytest.raises(FileNotFoundError, match=r"^model.init_checkpoint: no such file or directory: '.*gone.pt'$"):
        check_inputs(inputs)


# ------------------------------------------------------------------------------------------ frame store
@pytest.mark.parametrize("make", [lambda tmp: "", lambda tmp: str(tmp / "nowhere"), lambda tmp: str(tmp / "file")],
                         ids=["unset", "missing", "a_file"])
def test_a_missing_frame_store_directory_is_named(tmp_path, make):
    (tmp_path / "file").write_text("")
    root = make(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"^data.frame_store: no such frame-store directory: '{root}'$"):
        check_frame_store(root)


def test_a_directory_that_is_no_frame_store_is_refused(tmp_path):
    with pytest.raises(InputError, match=rf"^data.frame_store: {tmp_path}: not a frame store \(no store.json\)"):
        check_frame_store(str(tmp_path))


def test_a_store_without_manifest_is_refused(tmp_path):
    root = _store(tmp_path / "frames", ["v1"])
    (root / MANIFEST_FILE).unlink()
    with pytest.raises(InputError, match=rf"^data.frame_store: {root}: frame store has no {MANIFEST_FILE} "
                                         r"\(unfinished preprocessing\?\)"):
        check_frame_store(str(root))


def test_a_store_where_every_video_failed_is_refused(tmp_path):
    root = _store(tmp_path / "frames", [], failed=["v1", "v2"])
    with pytest.raises(InputError, match=rf"^data.frame_store: {root}: no video was stored \(every manifest row "
                                         r"failed\)$"):
        check_frame_store(str(root))


def test_a_store_missing_a_shard_names_it(tmp_path):
    root = _store(tmp_path / "frames", ["v1"])
    shard = next((root / SHARDS_DIR).iterdir())
    (shard / "data.mdb").unlink()
    with pytest.raises(InputError, match=rf"^data.frame_store: {root}: 1 shard\(s\) named by the manifest are "
                                         rf"missing, e.g. {SHARDS_DIR}/{shard.name}$"):
        check_frame_store(str(root))


# ------------------------------------------------------------------------------------------ tokenizer
def test_a_tokenizer_directory_or_vocab_file_passes(tmp_path):
    directory = write_vocab(["a red circle"], tmp_path / "tokenizer")
    check_tokenizer(str(directory))
    check_tokenizer(str(directory / "vocab.txt"))


@pytest.mark.parametrize("path", ["", "nowhere/vocab.txt"])
def test_a_missing_tokenizer_is_named(tmp_path, path):
    path = str(tmp_path / path) if path else path
    with pytest.raises(FileNotFoundError, match=rf"^data.tokenizer: no such file or directory: '{path}'$"):
        check_tokenizer(path)


def test_a_directory_without_a_tokenizer_is_refused(tmp_path):
    with pytest.raises(InputError, match=rf"^data.tokenizer: no tokenizer at {tmp_path} \(expected"):
        check_tokenizer(str(tmp_path))


def test_a_corrupt_tokenizer_is_refused(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match=rf"^data.tokenizer: {tmp_path}: cannot be loaded: ") as info:
        check_tokenizer(str(tmp_path))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ annotation files
def test_a_readable_file_passes(tmp_path):
    (tmp_path / "train.jsonl").write_text("{}\n")
    check_readable_file("data.train_file", str(tmp_path / "train.jsonl"), "annotation file")
    check_readable_file("data.train_file", (tmp_path / "train.jsonl").as_uri(), "annotation file")


def test_a_missing_file_is_named_with_what_it_should_be(tmp_path):
    path = str(tmp_path / "val.jsonl")
    with pytest.raises(FileNotFoundError, match=rf"^data.val_file: no such annotation file: '{path}'$"):
        check_readable_file("data.val_file", path, "annotation file")
    with pytest.raises(FileNotFoundError, match=r"^model.x: no such weights file: 'file:///.*val.jsonl'$"):
        check_readable_file("model.x", Path(path).as_uri(), "weights file")


def test_a_directory_is_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^data.val_file: '{tmp_path}' is a directory, not a file$"):
        check_readable_file("data.val_file", str(tmp_path), "annotation file")


def test_an_unreadable_file_is_a_permission_error(tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text("{}\n")

    def denied(path, mode="r"):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(preflight, "open", denied, raising=False)
    with pytest.raises(PermissionError, match=rf"^data.train_file: {tmp_path}/train.jsonl: cannot be read: "
                                              r"Permission denied$"):
        check_readable_file("data.train_file", str(tmp_path / "train.jsonl"), "annotation file")


def test_a_uri_that_cannot_be_opened_is_refused():
    with pytest.raises(InputError, match=r"^data.val_file: nosuch://bucket/val.jsonl: cannot be opened: "):
        check_readable_file("data.val_file", "nosuch://bucket/val.jsonl", "annotation file")


# ------------------------------------------------------------------------------------------ init checkpoint
def test_a_missing_init_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^model.init_checkpoint: no such file or directory: "
                                                rf"'{tmp_path}/gone.pt'$"):
        check_init_checkpoint(str(tmp_path / "gone.pt"))


def test_a_checkpoint_directory_without_weights_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^model.init_checkpoint: no such checkpoint file: "
                                                rf"'{tmp_path}/model.safetensors'$"):
        check_init_checkpoint(str(tmp_path))


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", r"not a readable checkpoint: "),
    ({}, r"holds no tensors$"),
    ({"some.other.model": torch.zeros(2)}, r"none of its 1 tensors is a ClipBERT weight \(e.g. 'some.other.model'\)$"),
], ids=["garbage", "empty", "foreign"])
def test_an_unusable_original_checkpoint_is_refused(tmp_path, content, message):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(InputError, match=rf"^model.init_checkpoint: {path}: {message}"):
        check_init_checkpoint(str(path))


@pytest.mark.parametrize("state", [
    {"transformer.bert.embeddings.word_embeddings.weight": torch.zeros(4, 2)},
    {"model": {"module.cnn.grid_encoder.0.weight": torch.zeros(2), "optimizer_step": 7}},
], ids=["plain", "wrapped"])
def test_an_original_checkpoint_with_clipbert_weights_passes(tmp_path, state):
    torch.save(state, tmp_path / "clipbert.pt")
    check_init_checkpoint(str(tmp_path / "clipbert.pt"))


def test_our_checkpoint_must_fit_the_configured_model(tmp_path):
    cfg, other = load_config("synthetic_tiny"), load_config("synthetic_tiny", OTHER_SIZE)
    torch.manual_seed(0)
    save_checkpoint(ClipBert(other.model), other, tmp_path / "other")
    check_init_checkpoint(str(tmp_path / "other"))  # without a config: only readable tensors
    check_init_checkpoint(str(tmp_path / "other"), other)
    with pytest.raises(InputError, match=rf"^model.init_checkpoint: {tmp_path}/other: \d+ tensors do not fit this "
                                         r"model .*bert\.embeddings.* vs model"):
        check_init_checkpoint(str(tmp_path / "other"), cfg)


# ------------------------------------------------------------------------------------------ pretrained dirs
@pytest.mark.parametrize("key", ["bert_dir", "resnet_dir"])
def test_a_missing_pretrained_directory_is_named(tmp_path, key):
    cfg = load_config("synthetic_tiny")
    setattr(cfg.model, key, str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match=rf"^model.{key}: no such directory: '{tmp_path}/gone'$"):
        check_weights(cfg)


def test_a_pretrained_directory_needs_a_weights_file(tmp_path):
    cfg = load_config("synthetic_tiny")
    cfg.model.resnet_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"^model.resnet_dir: {tmp_path}: no model.safetensors or "
                                                r"pytorch_model.bin in it$"):
        check_weights(cfg)
    (tmp_path / "pytorch_model.bin").write_bytes(b"weights")
    check_weights(cfg)
