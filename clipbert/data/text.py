"""Tokenizer loading and tokenisation: a local BERT word-piece tokenizer, a vocab.txt from words, fixed-length ids."""

from __future__ import annotations

import functools
import logging
import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import BertTokenizerFast

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, the BERT-uncased layout
_PIECE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def _read_vocab(path: Path) -> dict[str, int]:
    tokens = path.read_text(encoding="utf-8").splitlines()
    return {tok: i for i, tok in enumerate(tokens)}


def load_tokenizer(path: str | Path) -> BertTokenizerFast:
    """Lower-casing BERT word-piece tokenizer from a local from_pretrained directory or a vocab.txt file."""
    p = Path(path)
    if p.is_file():
        return BertTokenizerFast(vocab=_read_vocab(p), do_lower_case=True)
    if p.is_dir() and ((p / "tokenizer.json").is_file() or (p / "vocab.txt").is_file()):
        return BertTokenizerFast.from_pretrained(str(p))
    raise FileNotFoundError(f"no tokenizer at {p} (expected a directory with vocab.txt/tokenizer.json or a vocab.txt)")


@functools.lru_cache(maxsize=4)
def cached_tokenizer(path: str) -> BertTokenizerFast:
    """The process's tokenizer for `path` (load_tokenizer, loaded once per process)."""
    return load_tokenizer(path)


def write_vocab(words: Iterable[str], out_dir: str | Path) -> Path:
    """Write a word-piece vocab.txt covering `words` and return the directory (usable by load_tokenizer).

    Layout: [PAD] [UNK] [CLS] [SEP] [MASK], then every ASCII letter, digit and punctuation mark with its
    "##" continuation (so unseen words split into pieces instead of [UNK]), then each distinct lower-cased
    word piece of `words` in first-seen order (texts are split like BERT: runs of word characters and
    single punctuation marks).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits)
    vocab: dict[str, None] = dict.fromkeys(SPECIAL_TOKENS)
    vocab.update(dict.fromkeys(chars + list(string.punctuation)))
    vocab.update(dict.fromkeys(f"##{c}" for c in chars))
    for text in words:
        vocab.update(dict.fromkeys(_PIECE.findall(text.lower())))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return out


def tokenize(
    tokenizer: BertTokenizerFast, texts: Sequence[str], max_len: int, return_tensors: str = "np"
) -> dict[str, np.ndarray | torch.Tensor]:
    """Encode texts as "[CLS] tokens [SEP] [PAD]..." of exactly `max_len` ids.

    Longer texts are truncated at the end (word pieces beyond max_len - 2 are dropped; [CLS] and [SEP]
    are kept), shorter ones padded with [PAD] (mask 0). Token type ids are not returned: text is type 0.

    Returns:
        {"input_ids", "attention_mask"}: int64 (len(texts), max_len), numpy ("np") or torch ("pt").
    """
    if max_len < 2:
        raise ValueError(f"max_len must leave room for [CLS] and [SEP], got {max_len}")
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len)
    out = {k: np.asarray(enc[k], dtype=np.int64).reshape(len(texts), max_len) for k in ("input_ids", "attention_mask")}
    if return_tensors == "pt":
        return {k: torch.from_numpy(v) for k, v in out.items()}
    if return_tensors != "np":
        raise ValueError(f"return_tensors must be 'np' or 'pt', got {return_tensors!r}")
    return out
