"""Driver-side checks of a run's inputs before anything launches: frame store, tokenizer, annotations and weights.

Each check raises ``InputError`` (a ValueError), ``FileNotFoundError`` or ``PermissionError`` with one line that
names the config key, the path and the reason, so that a bad path ends a job at once (exit 2) instead of failing
inside every training worker after its restarts.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from clipbert.config import Config
from clipbert.data.frames import SHARDS_DIR, FrameStore

ANNOTATION_KEYS = ("train_file", "val_file", "test_file", "val_mc_file", "test_mc_file", "ans2label_file")
REQUIRED_ANNOTATIONS = ("train_file", "val_file")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a from_pretrained directory holds


class InputError(ValueError):
    """An input that exists but cannot be used."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened to ``limit`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_inputs(cfg: Config) -> FrameStore:
    """Check every input path of ``cfg`` on this machine; return the opened frame store.

    Raises:
        FileNotFoundError: a path does not exist.
        PermissionError: a file cannot be read.
        InputError: a path exists but holds no usable frame store, tokenizer, annotations or weights.
    """
    store = check_frame_store(cfg.data.frame_store)
    check_tokenizer(cfg.data.tokenizer)
    for key in ANNOTATION_KEYS:
        value = getattr(cfg.data, key)
        if value or key in REQUIRED_ANNOTATIONS:
            check_readable_file(f"data.{key}", value, "annotation file")
    check_weights(cfg)
    return store


def check_frame_store(root: str) -> FrameStore:
    """A frame store with a header, a manifest, at least one stored video and every shard it names."""
    if not root or not Path(root).is_dir():
        raise FileNotFoundError(f"data.frame_store: no such frame-store directory: {root!r}")
    try:
        store = FrameStore(root)
        shards = {shard for shard, _, _ in store.index.values()}
    except (OSError, ValueError) as e:
        raise InputError(f"data.frame_store: {root}: {one_line(e)}") from None
    if not shards:
        raise InputError(f"data.frame_store: {root}: no video was stored (every manifest row failed)")
    missing = sorted(s for s in shards if not (Path(root) / SHARDS_DIR / s / "data.mdb").is_file())
    if missing:
        raise InputError(f"data.frame_store: {root}: {len(missing)} shard(s) named by the manifest are missing, "
                         f"e.g. {SHARDS_DIR}/{missing[0]}")
    return store


def check_tokenizer(path: str) -> None:
    """A tokenizer directory or vocab.txt that loads."""
    from clipbert.data.text import load_tokenizer

    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"data.tokenizer: no such file or directory: {path!r}")
    try:
        load_tokenizer(path)
    except FileNotFoundError as e:
        raise InputError(f"data.tokenizer: {one_line(e)}") from None
    except Exception as e:  # a corrupt tokenizer.json or vocab fails in many ways
        raise InputError(f"data.tokenizer: {path}: cannot be loaded: {one_line(e)}") from None


def check_readable_file(key: str, path: str, what: str) -> None:
    """A regular file this process can read (a local path, or a URI that pyarrow can open)."""
    if "://" in path:
        _check_remote_file(key, path, what)
        return
    if not path or not Path(path).is_file():
        if path and Path(path).is_dir():
            raise FileNotFoundError(f"{key}: {path!r} is a directory, not a file")
        raise FileNotFoundError(f"{key}: no such {what}: {path!r}")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise PermissionError(f"{key}: {path}: cannot be read: {e.strerror or e}") from None


def _check_remote_file(key: str, uri: str, what: str) -> None:
    import pyarrow.fs

    try:
        fsys, inner = pyarrow.fs.FileSystem.from_uri(uri)
        info = fsys.get_file_info(inner)
    except Exception as e:
        raise InputError(f"{key}: {uri}: cannot be opened: {one_line(e)}") from None
    if info.type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(f"{key}: no such {what}: {uri!r}")


def check_weights(cfg: Config) -> None:
    """model.init_checkpoint, model.bert_dir and model.resnet_dir, when set, hold readable weights."""
    if cfg.model.init_checkpoint:
        check_init_checkpoint(cfg.model.init_checkpoint, cfg)
    for key in ("bert_dir", "resnet_dir"):
        directory = getattr(cfg.model, key)
        if directory:
            _check_pretrained_dir(f"model.{key}", directory)


def check_init_checkpoint(path: str, cfg: Config | None = None) -> None:
    """One of our checkpoint directories or an original ClipBERT .pt whose tensors map onto the model; with ``cfg``,
    one of our checkpoints must also fit the configured model's shapes (checked on a weightless "meta" model)."""
    from clipbert.model.checkpoint import WEIGHTS_NAME, map_original_key, mismatch_message, read_state_dict, shape_mismatches

    key, p = "model.init_checkpoint", Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{key}: no such file or directory: {path!r}")
    weights = p / WEIGHTS_NAME if p.is_dir() else p
    check_readable_file(key, str(weights), "checkpoint file")
    try:
        state = read_state_dict(weights)
    except Exception as e:
        raise InputError(f"{key}: {weights}: not a readable checkpoint: {one_line(e)}") from None
    if not state:
        raise InputError(f"{key}: {weights}: holds no tensors")
    if not p.is_dir() and not any(map_original_key(k)[0] for k in state):
        raise InputError(f"{key}: {weights}: none of its {len(state)} tensors is a ClipBERT weight "
                         f"(e.g. {next(iter(state))!r})")
    if p.is_dir() and cfg is not None:
        from clipbert.model.clipbert import ClipBert

        with torch.device("meta"):
            targets = ClipBert(cfg.model).state_dict()
        if wrong := shape_mismatches(state, targets):
            raise InputError(mismatch_message(path, wrong))


def _check_pretrained_dir(key: str, directory: str) -> None:
    p = Path(directory)
    if not p.is_dir():
        raise FileNotFoundError(f"{key}: no such directory: {directory!r}")
    found = [p / name for name in WEIGHT_FILES if (p / name).is_file()]
    if not found:
        raise FileNotFoundError(f"{key}: {directory}: no {' or '.join(WEIGHT_FILES)} in it")
    check_readable_file(key, str(found[0]), "weights file")
