"""Weights in and out: safetensors checkpoints, local BERT/ResNet from_pretrained dirs, the original ClipBERT .pt.

Our checkpoint is a directory with ``model.safetensors`` (the state dict) and ``config.json``
(``config_to_dict`` of the full Config). Nothing here unpickles arbitrary objects: safetensors files are
read with safetensors, and ``.pt``/``.bin`` files only with ``torch.load(weights_only=True)``.

The original checkpoint (``clipbert_image_text_pretrained.pt``) uses detectron2 and old-BERT names
(REFERENCE.md section 8). ``map_original_key`` translates them:

- ``cnn.feature.backbone.stem.conv1(.norm).*`` -> ``cnn.resnet.embedder.embedder.{convolution,normalization}.*``
- ``cnn.feature.backbone.resS.i.convK(.norm).*`` -> ``cnn.resnet.encoder.stages.{S-2}.layers.i.layer.{K-1}.*``
- ``cnn.feature.backbone.resS.i.shortcut(.norm).*`` -> ``cnn.resnet.encoder.stages.{S-2}.layers.i.shortcut.*``
- ``cnn.grid_encoder.0.weight`` -> same name
- ``transformer.bert.{embeddings,encoder,pooler}.*`` -> ``bert.*``; ``transformer.bert.visual_embeddings.*`` ->
  ``visual_embeddings.*``; ``transformer.classifier.*`` -> ``classifier.*``
- old BERT ``LayerNorm.gamma/beta`` -> ``LayerNorm.weight/bias``; a leading ``module.`` is dropped.
- skipped on purpose: the detector's RPN/ROI heads and pixel_mean/std, the pretraining heads
  (``transformer.cls.*``), the unused ``visual_embeddings.position_embeddings`` and ``position_ids`` buffers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from clipbert.config import Config, ModelConfig, config_from_dict, config_to_dict
from clipbert.config_renames import translate_renamed_keys
from clipbert.model.clipbert import ClipBert

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
RERANK_NAME = "rerank.json"  # {"fuse_weight": w}: the re-rank score's ITC weight, chosen on validation
PRETRAIN_HEAD = re.compile(r"^(mlm_head\.|classifier\.(weight|bias)$)")  # the "pretrain" head's own layers
IGNORED_TARGETS = ("num_batches_tracked",)  # BN counters: never in detectron2 FrozenBN, never used (BN frozen)


@dataclass
class ImportReport:
    """What a weight import did, by key."""

    loaded: list[str] = field(default_factory=list)  # our state-dict keys that received a tensor
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> why it was left out on purpose
    missing: list[str] = field(default_factory=list)  # our keys that got nothing (kept as initialised)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  # target -> shapes
    unexpected: list[str] = field(default_factory=list)  # source keys with no known target

    def summary(self) -> str:
        """One line with the counts and the first few problem keys."""
        text = (f"loaded {len(self.loaded)}, skipped {len(self.skipped)}, missing {len(self.missing)}, "
                f"mismatched {len(self.mismatched)}, unexpected {len(self.unexpected)}")
        if self.mismatched:
            first = list(self.mismatched.items())[:3]
            text += "; mismatched: " + ", ".join(f"{k} ckpt {a} vs model {b}" for k, (a, b) in first)
        if self.unexpected:
            text += "; unexpected: " + ", ".join(self.unexpected[:3])
        return text


# ----------------------------------------------------------------------------------------------- key mapping
_STEM = re.compile(r"^stem\.conv1\.(norm\.)?(\w+)$")
_BLOCK = re.compile(r"^res(\d+)\.(\d+)\.(conv(\d+)|shortcut)\.(norm\.)?(\w+)$")


def map_detectron2_resnet(key: str) -> str | None:
    """detectron2 ResNet key (after "backbone.") -> transformers ResNetModel key, or None if not a ResNet key."""
    if m := _STEM.match(key):
        part = "normalization" if m.group(1) else "convolution"
        return f"embedder.embedder.{part}.{m.group(2)}"
    if m := _BLOCK.match(key):
        stage, block, conv, k, norm, leaf = m.groups()
        part = "normalization" if norm else "convolution"
        where = "shortcut" if conv == "shortcut" else f"layer.{int(k) - 1}"
        return f"encoder.stages.{int(stage) - 2}.layers.{block}.{where}.{part}.{leaf}"
    return None


def _rename_layernorm(key: str) -> str:
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))


_SKIPS = (
    (re.compile(r"^(cnn\.feature\.)?(proposal_generator|roi_heads)\."), "detector head, unused by ClipBERT"),
    (re.compile(r"^(cnn\.feature\.)?pixel_(mean|std)$"), "detector input normalisation, ClipBERT normalises itself"),
    (re.compile(r"^transformer\.cls\."), "pretraining head (MLM/ITM), not reused downstream"),
    (re.compile(r"visual_embeddings\.position_embeddings\."), "unused by the original forward"),
    (re.compile(r"position_ids$"), "index buffer, rebuilt by the model"),
)


def map_original_key(key: str) -> tuple[str | None, str | None]:
    """Original-checkpoint key -> (our key, None), or (None, reason to skip), or (None, None) if unknown."""
    while key.startswith("module."):
        key = key[len("module."):]
    for pattern, reason in _SKIPS:
        if pattern.search(key):
            return None, reason
    key = _rename_layernorm(key)
    for prefix in ("cnn.feature.backbone.", "backbone."):
        if key.startswith(prefix):
            target = map_detectron2_resnet(key[len(prefix):])
            return (f"cnn.resnet.{target}", None) if target else (None, None)
    if key.startswith("cnn.grid_encoder."):
        return key, None
    if key.startswith("transformer.bert.visual_embeddings."):
        return key[len("transformer.bert."):], None
    if m := re.match(r"^transformer\.bert\.(embeddings|encoder|pooler)\.(.+)$", key):
        return f"bert.{m.group(1)}.{m.group(2)}", None
    if key.startswith("transformer.classifier."):
        return key[len("transformer."):], None
    return None, None


# ----------------------------------------------------------------------------------------------- loading
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a .pt/.pth/.bin via torch.load(weights_only=True)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    return {k: torch.as_tensor(v) for k, v in state.items() if hasattr(v, "shape")}


def load_mapped(
    model: nn.Module, state: Mapping[str, torch.Tensor], mapper: Callable[[str], tuple[str | None, str | None]],
    *, scope: str = "",
) -> ImportReport:
    """Copy `state` into `model` through `mapper`; shape mismatches are reported and left out.

    Args:
        model: the target module (a DDP wrapper is unwrapped).
        state: source tensors by source key.
        mapper: source key -> (target key, None) | (None, skip reason) | (None, None) for unknown keys.
        scope: only target keys starting with this prefix count as `missing` ("" = the whole model).

    Raises:
        ValueError: when nothing at all could be loaded (every key mismatched, unknown or skipped).
    """
    model = getattr(model, "module", model)
    targets = model.state_dict()
    report = ImportReport()
    with torch.no_grad():
        for key, tensor in state.items():
            target, reason = mapper(key)
            if target is None and reason:
                report.skipped[key] = reason
            elif target is None or target not in targets:
                report.unexpected.append(key)
            elif tuple(tensor.shape) != tuple(targets[target].shape):
                report.mismatched[target] = (tuple(tensor.shape), tuple(targets[target].shape))
            else:
                targets[target].copy_(tensor.to(targets[target].dtype))
                report.loaded.append(target)
    done = set(report.loaded)
    report.missing = [k for k in targets if k.startswith(scope) and k not in done
                      and not k.endswith(IGNORED_TARGETS)]
    if not report.loaded:
        raise ValueError(f"no weight could be loaded: {report.summary()}")
    (logger.warning if report.mismatched or report.unexpected else logger.info)("weights: %s", report.summary())
    return report


def import_original_checkpoint(model: nn.Module, path_or_state_dict: str | Path | Mapping) -> ImportReport:
    """Load the original ClipBERT checkpoint layout (e.g. clipbert_image_text_pretrained.pt) into `model`.

    Returns an ImportReport: loaded / skipped (detector and pretraining heads, with reasons) / missing (new
    heads, kept as initialised) / mismatched (shape differs: reported, not loaded) / unexpected.
    """
    if isinstance(path_or_state_dict, Mapping):
        state = path_or_state_dict
    else:
        state = read_state_dict(Path(path_or_state_dict))
    return load_mapped(model, state, map_original_key)


def _pretrained_weights(directory: Path) -> dict[str, torch.Tensor]:
    for name in (WEIGHTS_NAME, "pytorch_model.bin"):
        if (directory / name).is_file():
            return read_state_dict(directory / name)
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or pytorch_model.bin in {directory}")


def _bert_mapper(key: str) -> tuple[str | None, str | None]:
    key = _rename_layernorm(key.removeprefix("bert."))
    if key.endswith("position_ids"):
        return None, "index buffer, rebuilt by the model"
    if key.split(".")[0] in ("embeddings", "encoder", "pooler"):
        return f"bert.{key}", None
    return None, "not part of the BERT encoder (task/pretraining head)"


def _resnet_mapper(key: str) -> tuple[str | None, str | None]:
    key = key.removeprefix("resnet.")
    if key.split(".")[0] in ("embedder", "encoder"):
        return f"cnn.resnet.{key}", None
    return None, "not part of the ResNet trunk (classifier)"


def load_pretrained_bert(model: ClipBert, bert_dir: str | Path) -> ImportReport:
    """Copy BERT weights from a local from_pretrained directory (BertModel or BertFor* layouts)."""
    return load_mapped(model, _pretrained_weights(Path(bert_dir)), _bert_mapper, scope="bert.")


def load_pretrained_resnet(model: ClipBert, resnet_dir: str | Path) -> ImportReport:
    """Copy ResNet weights from a local from_pretrained directory (ResNetModel or ResNetForImageClassification).

    The architecture must be the detectron2 one (downsample_in_bottleneck=True); weights of a torchvision-
    style ResNet load without error but compute a different function.
    """
    return load_mapped(model, _pretrained_weights(Path(resnet_dir)), _resnet_mapper, scope="cnn.resnet.")


def build_model(cfg: ModelConfig) -> tuple[ClipBert, list[ImportReport]]:
    """ClipBert(cfg) with, in order, bert_dir, resnet_dir and init_checkpoint weights loaded when set.

    init_checkpoint may be one of our checkpoint directories (loaded by name, mismatched heads reported)
    or an original ClipBERT .pt file (mapped with map_original_key).
    """
    model = ClipBert(cfg)
    reports = []
    if cfg.bert_dir:
        reports.append(load_pretrained_bert(model, cfg.bert_dir))
    if cfg.resnet_dir:
        reports.append(load_pretrained_resnet(model, cfg.resnet_dir))
    if cfg.init_checkpoint:
        path = Path(cfg.init_checkpoint)
        if path.is_dir():
            state = load_file(str(path / WEIGHTS_NAME))
            if wrong := shape_mismatches(state, model.state_dict()):
                raise ValueError(mismatch_message(str(path), wrong))
            reports.append(load_mapped(model, state, _checkpoint_mapper(model.state_dict())))
        else:
            reports.append(import_original_checkpoint(model, path))
    return model, reports


def _checkpoint_mapper(targets: Mapping[str, torch.Tensor]) -> Callable[[str], tuple[str | None, str | None]]:
    """Our checkpoint's keys as they are; a pretraining head that this model lacks is skipped, with the reason."""
    def mapper(key: str) -> tuple[str | None, str | None]:
        if key not in targets and PRETRAIN_HEAD.match(key):
            return None, "image-text pretraining head: finetuning starts its own task head, as the original"
        return key, None
    return mapper


def shape_mismatches(state: Mapping[str, torch.Tensor],
                     targets: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Keys present in both whose shapes differ, outside the task head (a task head of another width, e.g. another
    answer vocabulary, is simply started afresh): key -> (checkpoint shape, model shape)."""
    return {k: (tuple(v.shape), tuple(targets[k].shape)) for k, v in state.items()
            if k in targets and tuple(v.shape) != tuple(targets[k].shape) and not k.startswith("classifier.")}


def mismatch_message(path: str, wrong: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> str:
    """One line naming the first mismatched keys of an init checkpoint of another model size."""
    shown = ", ".join(f"{k} checkpoint {a} vs model {b}" for k, (a, b) in list(wrong.items())[:4])
    more = f" (and {len(wrong) - 4} more)" if len(wrong) > 4 else ""
    return (f"model.init_checkpoint: {path}: {len(wrong)} tensors do not fit this model (a checkpoint of another "
            f"model size?): {shown}{more}")


# ----------------------------------------------------------------------------------------------- our format
def save_checkpoint(model: nn.Module, cfg: Config | ModelConfig, directory: str | Path) -> Path:
    """Write model.safetensors (state dict) and config.json (the full Config) into `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    full = cfg if isinstance(cfg, Config) else Config(model=cfg)
    state = getattr(model, "module", model).state_dict()
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / WEIGHTS_NAME),
              metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(config_to_dict(full), indent=2))
    return out


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[ClipBert, Config]:
    """Rebuild (model, cfg) from save_checkpoint output; the state dict must match exactly.

    The stored bert_dir / resnet_dir / init_checkpoint are not re-read: the weights come from the file.
    """
    src = Path(directory)
    cfg = saved_config((src / CONFIG_NAME).read_text())
    model_cfg = dataclasses.replace(cfg.model, bert_dir=None, resnet_dir=None, init_checkpoint=None)
    model = ClipBert(model_cfg)
    model.load_state_dict(load_file(str(src / WEIGHTS_NAME), device=str(map_location)))
    return model.to(map_location), cfg


def saved_config(text: str | bytes) -> Config:
    """The Config of a checkpoint's config.json text; keys saved under their earlier names are read as the new ones."""
    return config_from_dict(translate_renamed_keys(json.loads(text)))


def rerank_weight(directory: str | Path) -> float:
    """The ITC weight of the checkpoint's re-rank score (scoring.fuse) that its run chose on validation; 0.0 (the
    ITM margin alone) for a checkpoint exported without one."""
    path = Path(directory) / RERANK_NAME
    return float(json.loads(path.read_text())["fuse_weight"]) if path.is_file() else 0.0


def checkpoint_hash(directory: str | Path) -> str:
    """A short content hash of a checkpoint's weights (blake2b-64 of model.safetensors, hex)."""
    digest = hashlib.blake2b(digest_size=8)
    with open(Path(directory) / WEIGHTS_NAME, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint_config(directory: str | Path) -> Config:
    """The Config saved with a checkpoint; FileNotFoundError names what is missing."""
    src = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (src / name).is_file():
            raise FileNotFoundError(f"not a checkpoint directory (no {name}): {src}")
    return saved_config((src / CONFIG_NAME).read_text())


def check_retrieval_checkpoint(directory: str | Path) -> Config:
    """The checkpoint's Config, after checking it has the contrastive heads an index needs (ValueError if not)."""
    cfg = read_checkpoint_config(directory)
    if not cfg.model.contrastive:
        raise ValueError(f"checkpoint {directory} has no contrastive (ITC) heads, so it cannot embed for an index: "
                         "train it with model.contrastive=true")
    return cfg


def contrastive_logit_scale(directory: str | Path) -> float:
    """The checkpoint's learned InfoNCE multiplier exp(logit_scale), clamped to <= 100 as in training."""
    with safe_open(str(Path(directory) / WEIGHTS_NAME), framework="pt") as f:
        return float(f.get_tensor("logit_scale").exp().clamp(max=100.0))


def checkpoint_problem(directory: str, extra_files: tuple[str, ...] = ()) -> str | None:
    """Why the checkpoint at ``directory`` (a local path or a storage URI) cannot be loaded, or None when it can:
    config.json must parse, model.safetensors must load (a truncated or overwritten file does not), and each of
    ``extra_files`` (e.g. the training state) must load with ``torch.load(weights_only=True)``. A bit flip inside
    tensor data is not detected: safetensors files carry no checksum."""
    import io

    from safetensors.torch import load as load_safetensors

    from clipbert import storage

    def read(name: str) -> bytes:
        return storage.read_bytes(storage.join(directory, name))

    for name, check in [(CONFIG_NAME, saved_config),
                        (WEIGHTS_NAME, load_safetensors),
                        *[(n, lambda b: torch.load(io.BytesIO(b), map_location="cpu", weights_only=True))
                          for n in extra_files]]:
        try:
            check(read(name))
        except FileNotFoundError:
            return f"{name} is missing"
        except Exception as e:  # each library raises its own type for a damaged file
            return f"{name} cannot be loaded ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    return None
