"""Tests for tokenizer helpers: vocab building, loading from a dir or a file, fixed-length tokenization."""

import numpy as np
import pytest
import torch

from clipbert.data.text import SPECIAL_TOKENS, load_tokenizer, tokenize, write_vocab


@pytest.fixture
def tokenizer(tmp_path):
    return load_tokenizer(write_vocab(["A man is cooking pasta.", "Two dogs play in the park!"], tmp_path / "tok"))


def test_vocab_layout(tmp_path):
    out = write_vocab(["Hello world", "hello, WORLD again"], tmp_path / "v")
    tokens = (out / "vocab.txt").read_text().splitlines()
    assert tuple(tokens[:5]) == SPECIAL_TOKENS
    assert len(tokens) == len(set(tokens))
    assert {"hello", "world", "again", ",", "a", "##a"} <= set(tokens)


def test_known_words_map_to_single_ids(tokenizer):
    out = tokenize(tokenizer, ["a man is cooking pasta"], 10)
    pieces = tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    assert pieces[:7] == ["[CLS]", "a", "man", "is", "cooking", "pasta", "[SEP]"]
    assert pieces[7:] == ["[PAD]"] * 3
    np.testing.assert_array_equal(out["attention_mask"][0], [1] * 7 + [0] * 3)


def test_unknown_words_split_into_pieces_not_unk(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokenize(tokenizer, ["zebra"], 10)["input_ids"][0])
    assert "[UNK]" not in pieces and pieces[1:6] == ["z", "##e", "##b", "##r", "##a"]


def test_truncation_keeps_cls_and_sep(tokenizer):
    out = tokenize(tokenizer, ["two dogs play in the park " * 5, "a"], 6)
    assert out["input_ids"].shape == (2, 6) and out["input_ids"].dtype == np.int64
    pieces = tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    assert pieces == ["[CLS]", "two", "dogs", "play", "in", "[SEP]"]
    assert out["attention_mask"][0].sum() == 6


def test_torch_output_and_vocab_file_loading(tmp_path):
    directory = write_vocab(["red ball"], tmp_path / "t")
    from_file = load_tokenizer(directory / "vocab.txt")
    from_dir = load_tokenizer(directory)
    a = tokenize(from_file, ["Red ball"], 5, return_tensors="pt")
    b = tokenize(from_dir, ["red BALL"], 5, return_tensors="pt")
    assert isinstance(a["input_ids"], torch.Tensor) and torch.equal(a["input_ids"], b["input_ids"])


def test_bad_arguments(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="CLS"):
        tokenize(tokenizer, ["a"], 1)
    with pytest.raises(ValueError, match="return_tensors"):
        tokenize(tokenizer, ["a"], 4, return_tensors="tf")
