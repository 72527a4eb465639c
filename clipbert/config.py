"""The one configuration schema (model, sampling, data, optimisation, training) and the YAML preset loader."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipbert.config_renames import RENAMED_KEYS, renamed_key_message

logger = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "presets"

TASKS = ("retrieval", "mc", "qa", "pretrain")
HEADS = ("itm", "mc", "qa", "pretrain")
# Which heads can serve which task: MSRVTT-MC is scored with the retrieval (ITM) head, as the original does;
# image-text pretraining has its own heads (MLM + a 2-way ITM layer).
TASK_HEADS = {"retrieval": ("itm",), "mc": ("mc", "itm"), "qa": ("qa",), "pretrain": ("pretrain",)}
CONSENSUS = ("mean", "max", "lse")
CONTRASTIVE_LOGIT_SCALE = 1 / 0.07  # the dual encoder's InfoNCE inverse temperature (temperature 0.07)
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class ModelConfig:
    """Architecture of ClipBERT: ResNet grid encoder, BERT cross-modal encoder, task head, contrastive heads."""

    head: str = "itm"  # task head: "itm" (2-way image-text matching), "mc" (1 score per option), "qa" (answer vocab),
    # "pretrain" (image-text pretraining: MLM head tied to the word embeddings + a 2-way ITM layer on the pooled output)
    num_answers: int = 1500  # width of the "qa" head; load_config copies data.num_answers here
    consensus: str = "lse"  # clip score consensus over the N clips, on logits: "mean", "max" or "lse" (LogSumExp)
    img_size: int = 448  # S: frames are resized (longer side) and zero-padded to S x S pixels
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB mean subtracted from 0-255 pixels
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGB std the centred 0-255 pixels are divided by
    input_format: str = "BGR"  # channel order fed to the CNN ("BGR" as detectron2, or "RGB")
    # -- visual backbone (transformers ResNet; detectron2 R-50 = bottleneck, [3,4,6,3], stride in the 1x1)
    resnet_layer_type: str = "bottleneck"  # "bottleneck" (ResNet-50) or "basic" (tiny CPU models)
    resnet_depths: tuple[int, ...] = (3, 4, 6, 3)  # residual blocks per stage (res2..res5)
    resnet_hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)  # output channels per stage
    resnet_embedding_size: int = 64  # stem output channels
    downsample_in_bottleneck: bool = True  # stride in the first 1x1 conv (detectron2 STRIDE_IN_1X1, MSRA style)
    freeze_at: int = 2  # frozen CNN prefix: 0 none, 1 stem, 2 stem+res2 (detectron2 FREEZE_AT), k stem+k-1 stages
    freeze_cnn: bool = False  # freeze the whole ResNet (grid_encoder stays trainable)
    # -- transformer (BERT-base in the original)
    vocab_size: int = 30522  # word-piece vocabulary size (must cover the tokenizer)
    hidden_size: int = 768  # D: transformer width, also the grid encoder's output channels
    num_hidden_layers: int = 12  # transformer layers
    num_attention_heads: int = 12  # attention heads per layer
    intermediate_size: int = 3072  # feed-forward width
    hidden_act: str = "gelu"  # feed-forward activation (exact erf GELU, as BERT)
    hidden_dropout_prob: float = 0.1  # dropout on embeddings, sublayer outputs and the pooled output
    attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities
    max_position_embeddings: int = 512  # text positions (visual tokens get none)
    type_vocab_size: int = 2  # BERT token types (text uses type 0 only)
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon (BERT and visual embeddings)
    max_grid_row_position_embeddings: int = 100  # rows of the visual row-position table
    max_grid_col_position_embeddings: int = 100  # columns of the visual column-position table
    pixel_random_sampling_size: int = 0  # keep this many random visual tokens in training (0 = off; pretraining 100)
    # -- contrastive embeddings for the index (not in the original)
    contrastive: bool = False  # build ITC projection heads (encode_text / encode_video) trained with InfoNCE
    embed_dim: int = 256  # E: dimension of the L2-normalised retrieval embeddings
    logit_scale_init: float = CONTRASTIVE_LOGIT_SCALE  # initial InfoNCE inverse temperature, learned in log space
    # -- weights and memory
    bert_dir: str | None = None  # local from_pretrained directory with BERT weights (None = random init)
    resnet_dir: str | None = None  # local from_pretrained directory with ResNet weights (None = random init)
    init_checkpoint: str | None = None  # original ClipBERT .pt (or our checkpoint dir) loaded after bert/resnet dirs
    gradient_checkpointing: bool = False  # recompute BERT layers and trainable ResNet stages in backward


@dataclass
class SamplingConfig:
    """Sparse clip sampling: N clips of T frames spanning T/clip_fps seconds (REFERENCE.md section 2)."""

    clip_fps: float = 2.0  # clip frame rate: T frames span T / clip_fps seconds
    frames_per_clip: int = 2  # T: frames per clip (mean-pooled after the CNN)
    train_n_clips: int = 8  # N: random clips per video per training step
    train_spread: str = "random"  # training starts: "random" (independent, the original) or "segment" (one
    # uniform start per N-th of the video, so the clips cover it; TSN-style)
    inference_n_clips: int = 16  # N_test: uniform clips per video at inference (the paper: 1 or 16)
    inference_position: str = "middle"  # clip used when N_test=1: "middle" (retrieval) or "first" (QA)
    strategy: str = "sparse"  # "sparse" (N clips of T frames) or "dense" (one clip of dense_frames, train+eval)
    dense_frames: int = 16  # frames spread uniformly over the whole video in the "dense" strategy


@dataclass
class DataConfig:
    """Where the frames and annotations are, and how text is prepared."""

    root: str = ""  # base directory: relative data paths below are resolved against it ("" = as given)
    frame_store: str = ""  # path of the frame store directory (manifest.parquet + LMDB shards)
    task: str = "retrieval"  # "retrieval", "mc" (multiple choice), "qa" (open-ended QA) or "pretrain" (image captions)
    train_file: str = ""  # training annotations (jsonl, ClipBERT txt_db format)
    val_file: str = ""  # validation annotations (jsonl)
    test_file: str = ""  # test annotations (jsonl)
    val_mc_file: str = ""  # optional multiple-choice annotations scored with the retrieval head at validation
    test_mc_file: str = ""  # the same for the held-out test evaluation at the end of a run
    ans2label_file: str = ""  # QA answer vocabulary (json {answer: label})
    tokenizer: str = ""  # local tokenizer directory (from_pretrained) or a vocab.txt path
    max_txt_len: int = 20  # L: text tokens incl. [CLS]/[SEP]; longer texts are truncated, shorter padded
    itm_neg_size: int = 1  # retrieval: random negative captions (other videos) per positive
    itm_swap_negatives: int = 0  # retrieval: negatives per positive that differ from it in one word
    # (clipbert.data.caption_swaps), in place of as many random ones when a caption has too few swappable words
    num_answers: int = 1500  # QA answer vocabulary size floor: max(|ans2label|, num_answers) labels
    num_options: int = 5  # multiple choice: options per question
    caption_group_size: int = 2  # pretrain: captions of one image scored against one CNN pass
    mlm_probability: float = 0.15  # pretrain: share of text tokens masked (80% [MASK], 10% random, 10% kept)
    itm_neg_probability: float = 0.5  # pretrain: chance that a caption is replaced by one of another image


@dataclass
class OptimConfig:
    """AdamW with the original's 8 parameter groups, warmup + linear decay."""

    lr: float = 5e-5  # peak learning rate of the transformer side
    cnn_lr: float = 5e-5  # peak learning rate of the CNN side (grid encoder and ResNet)
    weight_decay: float = 1e-3  # decoupled weight decay, transformer side
    cnn_weight_decay: float = 1e-3  # decoupled weight decay, CNN side
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    eps: float = 1e-6  # AdamW epsilon
    transformer_lr_mul: float = 1.0  # lr multiplier for transformer params whose name contains the prefix
    transformer_lr_mul_prefix: str = ""  # name substring selecting the transformer lr_mul group ("" = none)
    cnn_lr_mul: float = 1.0  # lr multiplier for CNN params whose name contains the prefix
    cnn_lr_mul_prefix: str = "grid_encoder"  # name substring selecting the CNN lr_mul group
    warmup_ratio: float = 0.1  # fraction of the optimiser steps spent in linear warmup
    grad_norm: float = 5.0  # global gradient-norm clip (-1 = off)
    batch_size: int = 16  # videos per worker per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimiser step
    num_epochs: float = 20.0  # passes over the training annotations
    itc_weight: float = 1.0  # weight of the contrastive (InfoNCE) loss when model.contrastive is on
    itm_hard_negatives: bool = False  # retrieval with contrastive heads: also score, per video, one in-batch caption
    # and, per caption, one in-batch video drawn by contrastive similarity (ALBEF's hard negatives)


@dataclass
class TrainConfig:
    """Run-level settings of the distributed training loop."""

    num_workers: int = 1  # Ray Train workers (one GPU each when use_gpu)
    use_gpu: bool = False  # train on GPUs
    precision: str = "bf16"  # autocast precision: "fp32", "bf16" or "fp16" (with a grad scaler)
    seed: int = 42  # global random seed
    eval_every_steps: int = 500  # optimiser steps between validations (and checkpoints)
    keep_checkpoints: int = 2  # checkpoints kept by Ray Train
    metric: str = "t2v_r1"  # main validation metric (checkpoint ranking, Tune)
    metric_mode: str = "max"  # "max" or "min" for the main metric
    log_every_steps: int = 50  # optimiser steps between log lines
    max_failures: int = 2  # restarts from the last checkpoint after a worker dies
    placement_strategy: str = "PACK"  # Ray placement of the workers: "PACK" or "SPREAD" (one per node)
    cpus_per_worker: float = 0.0  # 0 = fit workers and data stage to the cluster as it is now; > 0 = fixed
    # (autoscaling clusters, whose nodes appear after submission: no placement check, 1 CPU per data task)
    cpu_threads: int = 0  # CPU training: torch intra-op threads per worker; 0 = the node's cores shared among its
    # workers (Ray alone gives a worker its whole reserved CPUs: 1 of 2 cores, with the data stage on the other)


@dataclass
class Config:
    """Everything a run needs, in five sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS: dict[str, type] = {"model": ModelConfig, "sampling": SamplingConfig, "data": DataConfig, "optim": OptimConfig,
            "train": TrainConfig}


def list_presets() -> list[str]:
    """Names of the presets shipped in clipbert/presets (files starting with '_' are building blocks)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def all_keys() -> list[str]:
    """Every valid dotted key, e.g. "optim.lr"."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def unknown_key_error(key: str) -> ValueError:
    """The error for a key the schema lacks: a renamed key gets its new name, any other the nearest valid key."""
    if renamed := renamed_key_message(key):
        return ValueError(renamed)
    near = difflib.get_close_matches(key, all_keys() + list(RENAMED_KEYS), n=1, cutoff=0.0)
    hint = f"; did you mean {RENAMED_KEYS.get(near[0], near[0])!r}?" if near else ""
    return ValueError(f"unknown config key {key!r}{hint}")


def _resolve_preset_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    candidates = [PRESET_DIR / f"{name_or_path}.yaml", Path(name_or_path)]
    if relative_to is not None:
        candidates.insert(1, relative_to / name_or_path)
    for path in candidates:
        if path.is_file():
            return path
    raise ValueError(f"no preset or YAML file {name_or_path!r}; presets: {', '.join(list_presets())}")


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _load_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a preset YAML and merge it over its `base:` preset(s) (a name, a path, or a list of them)."""
    if path.resolve() in seen:
        raise ValueError(f"preset inheritance cycle at {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a preset must be a mapping of sections")
    bases = data.pop("base", None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = _resolve_preset_path(base, relative_to=path.parent)
        merged = _deep_merge(merged, _load_yaml_tree(base_path, seen + (path.resolve(),)))
    return _deep_merge(merged, data)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the field type `tp`, converting int->float and list->tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(value, arg, key)
            except ValueError:
                pass
        raise ValueError(f"{key}: {value!r} is not a {tp}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list/tuple, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ValueError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(coerce_value(v, a, key) for v, a in zip(value, args))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads "5e-5" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ValueError(f"{key}: {value!r} is not a {_type_name(tp)}")


def _section_from_dict(cls: type, values: dict, section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name not in names:
            raise unknown_key_error(f"{section}.{name}")
        kwargs[name] = coerce_value(value, hints[name], f"{section}.{name}")
    return cls(**kwargs)


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (JSON/YAML-safe: tuples become lists) of a Config."""
    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v

    return {s: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, s)).items()} for s in SECTIONS}


def config_from_dict(values: dict) -> Config:
    """Rebuild a Config from `config_to_dict` output (or any partial nested dict); unknown keys raise ValueError."""
    sections = {}
    for name, sub in values.items():
        if name not in SECTIONS:
            raise unknown_key_error(name)
        if not isinstance(sub, dict):
            raise ValueError(f"config section {name!r} must be a mapping, got {sub!r}")
        sections[name] = _section_from_dict(SECTIONS[name], sub, name)
    return Config(**sections)


def parse_override(text: str) -> tuple[str, Any]:
    """Split "section.key=value"; the value goes through ast.literal_eval and stays a string if that fails.

    For string fields (e.g. data.tokenizer=2024) the raw text is kept even when it parses as something else.
    """
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    section, _, name = key.partition(".")
    if section in SECTIONS and value is not None and not isinstance(value, str):
        hint = typing.get_type_hints(SECTIONS[section]).get(name)
        if hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                           and str in typing.get_args(hint) and len(typing.get_args(hint)) == 2):
            value = raw
    return key, value


def apply_overrides(tree: dict, overrides: typing.Iterable[str]) -> dict:
    """Set dotted keys in a nested dict; unknown keys raise ValueError naming the nearest valid key."""
    tree = {k: dict(v) for k, v in tree.items()}
    valid = set(all_keys())
    for text in overrides:
        key, value = parse_override(text)
        if key not in valid:
            raise unknown_key_error(key)
        section, name = key.split(".", 1)
        tree.setdefault(section, {})[name] = value
    return tree


DATA_PATH_KEYS = ("frame_store", "train_file", "val_file", "test_file", "val_mc_file", "test_mc_file", "ans2label_file",
                  "tokenizer")


def sync_derived(cfg: Config) -> Config:
    """Copy values that one section derives from another (model.num_answers <- data.num_answers for QA)
    and resolve relative data paths against data.root."""
    if cfg.model.head == "qa":
        cfg.model.num_answers = cfg.data.num_answers
    if cfg.data.root:
        for key in DATA_PATH_KEYS:
            value = getattr(cfg.data, key)
            if value and "://" not in value and not os.path.isabs(value):
                setattr(cfg.data, key, os.path.join(cfg.data.root, value))
    return cfg


def validate_config(cfg: Config) -> Config:
    """Raise ValueError on inconsistent or out-of-range values; returns cfg."""
    m, s, d = cfg.model, cfg.sampling, cfg.data
    checks = [
        (d.task in TASKS, f"data.task must be one of {TASKS}, got {d.task!r}"),
        (m.head in HEADS, f"model.head must be one of {HEADS}, got {m.head!r}"),
        (m.head in TASK_HEADS.get(d.task, ()), f"model.head {m.head!r} cannot serve data.task {d.task!r}"),
        (m.consensus in CONSENSUS, f"model.consensus must be one of {CONSENSUS}, got {m.consensus!r}"),
        (m.input_format in ("BGR", "RGB"), f"model.input_format must be BGR or RGB, got {m.input_format!r}"),
        (m.hidden_size % m.num_attention_heads == 0, "model.hidden_size must be a multiple of num_attention_heads"),
        (len(m.resnet_depths) == len(m.resnet_hidden_sizes), "model.resnet_depths/resnet_hidden_sizes lengths differ"),
        (0 < d.max_txt_len <= m.max_position_embeddings, "data.max_txt_len must be in [1, max_position_embeddings]"),
        (s.clip_fps > 0 and s.frames_per_clip >= 1,
         "sampling.clip_fps must be > 0 and sampling.frames_per_clip >= 1"),
        (s.train_n_clips >= 1 and s.inference_n_clips >= 1, "sampling clip counts must be >= 1"),
        (s.inference_position in ("middle", "first"), "sampling.inference_position must be 'middle' or 'first'"),
        (s.strategy in ("sparse", "dense"), "sampling.strategy must be 'sparse' or 'dense'"),
        (s.train_spread in ("random", "segment"), "sampling.train_spread must be 'random' or 'segment'"),
        (cfg.train.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}"),
        (cfg.train.metric_mode in ("max", "min"), "train.metric_mode must be 'max' or 'min'"),
        (m.head != "qa" or m.num_answers == d.num_answers, "model.num_answers must equal data.num_answers for QA"),
        (d.caption_group_size >= 1, "data.caption_group_size must be >= 1"),
        (0 <= d.mlm_probability < 1 and 0 <= d.itm_neg_probability < 1,
         "data.mlm_probability and data.itm_neg_probability must be in [0, 1)"),
        (d.task != "pretrain" or (s.train_n_clips == 1 and s.inference_n_clips == 1),
         "pretraining scores each image as one clip: set sampling.train_n_clips and inference_n_clips to 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return cfg


def load_config(name_or_yaml_path: str, overrides: typing.Iterable[str] = ()) -> Config:
    """Build a Config from a preset name (see list_presets) or a YAML path, then `section.key=value` overrides.

    Args:
        name_or_yaml_path: preset name ("msrvtt_ret", "tiny_qa", ...) or a YAML file; YAML files may say
            `base: <preset or path>` (or a list of them) to inherit and override.
        overrides: strings like "optim.lr=1e-4" (values parsed with ast.literal_eval, else kept as strings).

    Returns:
        A validated Config. Unknown keys raise ValueError naming the nearest valid key.
    """
    return config_from_tree(load_config_tree(name_or_yaml_path, overrides))


def load_config_tree(name_or_yaml_path: str, overrides: typing.Iterable[str] = ()) -> dict:
    """The nested dict of a preset or YAML file with its bases merged and the overrides applied (not yet checked
    against the schema, data paths not yet resolved): what a sweep varies before building each trial's Config."""
    return apply_overrides(_load_yaml_tree(_resolve_preset_path(name_or_yaml_path)), overrides)


def config_from_tree(tree: dict) -> Config:
    """A validated Config from a nested dict (see load_config_tree), derived values synced and data paths resolved."""
    return validate_config(sync_derived(config_from_dict(tree)))
