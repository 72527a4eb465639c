"""Tests for weights: safetensors round trip, original-checkpoint import (tiny and full size), pretrained dirs."""

import dataclasses
import pickle

import pytest
import torch
from transformers import BertForPreTraining, ResNetForImageClassification

from clipbert.model.checkpoint import (
    build_model,
    checkpoint_problem,
    import_original_checkpoint,
    load_checkpoint,
    map_original_key,
    read_checkpoint_config,
    save_checkpoint,
)
from clipbert.config import Config, ModelConfig, load_config
from clipbert.model.clipbert import ClipBert, bert_config, resnet_config


def micro_cfg(**kw) -> ModelConfig:
    base = dict(img_size=64, resnet_layer_type="basic", resnet_depths=(1, 2, 1), resnet_hidden_sizes=(8, 16, 32),
                resnet_embedding_size=8, vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=16, contrastive=True, embed_dim=16)
    base.update(kw)
    return ModelConfig(**base)


# ----------------------------------------------------------------------------------------------- original layout
def _conv(shapes: dict, name: str, cout: int, cin: int, k: int) -> None:
    shapes[f"{name}.weight"] = (cout, cin, k, k)
    for leaf in ("weight", "bias", "running_mean", "running_var"):  # detectron2 FrozenBatchNorm2d buffers
        shapes[f"{name}.norm.{leaf}"] = (cout,)


def detectron2_resnet_shapes(cfg: ModelConfig) -> dict:
    """Key names and shapes of a detectron2 ResNet (stride_in_1x1 bottleneck or basic blocks)."""
    shapes: dict = {}
    _conv(shapes, "stem.conv1", cfg.resnet_embedding_size, 3, 7)
    cin = cfg.resnet_embedding_size
    for s, (depth, cout) in enumerate(zip(cfg.resnet_depths, cfg.resnet_hidden_sizes)):
        for i in range(depth):
            block = f"res{s + 2}.{i}"
            if cfg.resnet_layer_type == "bottleneck":
                mid = cout // 4
                _conv(shapes, f"{block}.conv1", mid, cin, 1)
                _conv(shapes, f"{block}.conv2", mid, mid, 3)
                _conv(shapes, f"{block}.conv3", cout, mid, 1)
            else:
                _conv(shapes, f"{block}.conv1", cout, cin, 3)
                _conv(shapes, f"{block}.conv2", cout, cout, 3)
            if i == 0 and (cin != cout or s > 0):
                _conv(shapes, f"{block}.shortcut", cout, cin, 1)
            cin = cout
    return shapes


def original_state_shapes(cfg: ModelConfig, num_labels: int | None = None, old_ln_names: bool = True) -> dict:
    """Every key of a ClipBERT e2e checkpoint with its shape (REFERENCE.md section 8 naming)."""
    d, v, i = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    ln = ("gamma", "beta") if old_ln_names else ("weight", "bias")
    shapes = {f"cnn.feature.backbone.{k}": s for k, s in detectron2_resnet_shapes(cfg).items()}
    shapes.update({
        "cnn.feature.pixel_mean": (3, 1, 1), "cnn.feature.pixel_std": (3, 1, 1),
        "cnn.feature.proposal_generator.rpn_head.conv.weight": (8, 8, 3, 3),
        "cnn.feature.roi_heads.box_predictor.cls_score.weight": (1601, 8),
        "cnn.feature.roi_heads.attribute_predictor.cls_embedding.weight": (1601, 8),
        "cnn.grid_encoder.0.weight": (d, cfg.resnet_hidden_sizes[-1], 3, 3),
    })
    bert = {
        "embeddings.word_embeddings.weight": (v, d),
        "embeddings.token_type_embeddings.weight": (2, d),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, d),
        f"embeddings.LayerNorm.{ln[0]}": (d,), f"embeddings.LayerNorm.{ln[1]}": (d,),
        "visual_embeddings.position_embeddings.weight": (512, d),
        "visual_embeddings.row_position_embeddings.weight": (100, d),
        "visual_embeddings.col_position_embeddings.weight": (100, d),
        "visual_embeddings.token_type_embeddings.weight": (1, d),
        f"visual_embeddings.LayerNorm.{ln[0]}": (d,), f"visual_embeddings.LayerNorm.{ln[1]}": (d,),
        "pooler.dense.weight": (d, d), "pooler.dense.bias": (d,),
    }
    for layer in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{layer}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            bert[p + name + ".weight"], bert[p + name + ".bias"] = (d, d), (d,)
        bert[p + "intermediate.dense.weight"], bert[p + "intermediate.dense.bias"] = (i, d), (i,)
        bert[p + "output.dense.weight"], bert[p + "output.dense.bias"] = (d, i), (d,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            bert[f"{p}{name}.{ln[0]}"], bert[f"{p}{name}.{ln[1]}"] = (d,), (d,)
    shapes.update({f"transformer.bert.{k}": s for k, s in bert.items()})
    shapes.update({
        "transformer.cls.predictions.bias": (v,), "transformer.cls.predictions.transform.dense.weight": (d, d),
        "transformer.cls.predictions.transform.LayerNorm.weight": (d,), "transformer.cls.predictions.decoder.weight":
        (v, d), "transformer.cls.seq_relationship.weight": (2, d), "transformer.cls.seq_relationship.bias": (2,),
    })
    if num_labels is not None:
        shapes.update({"transformer.classifier.0.weight": (2 * d, d), "transformer.classifier.0.bias": (2 * d,),
                       "transformer.classifier.2.weight": (num_labels, 2 * d),
                       "transformer.classifier.2.bias": (num_labels,)})
    return shapes


def random_state(shapes: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


EXPECTED_SKIPS = ("cnn.feature.pixel", "cnn.feature.proposal_generator", "cnn.feature.roi_heads", "transformer.cls.",
                  "transformer.bert.visual_embeddings.position_embeddings")


def test_tiny_original_checkpoint_imports_completely():
    cfg = micro_cfg()
    model = ClipBert(cfg)
    src = random_state(original_state_shapes(cfg))
    report = import_original_checkpoint(model, src)
    assert not report.unexpected and not report.mismatched
    assert all(k.startswith(EXPECTED_SKIPS) for k in report.skipped)
    assert len(report.loaded) + len(report.skipped) == len(src)
    # only the new heads start fresh
    assert all(k.startswith(("classifier.", "text_proj.", "video_proj.", "logit_scale")) for k in report.missing)
    assert any(k.startswith("classifier.") for k in report.missing)
    sd = model.state_dict()
    pairs = {
        "cnn.feature.backbone.stem.conv1.weight": "cnn.resnet.embedder.embedder.convolution.weight",
        "cnn.feature.backbone.stem.conv1.norm.running_var": "cnn.resnet.embedder.embedder.normalization.running_var",
        "cnn.feature.backbone.res3.1.conv2.weight": "cnn.resnet.encoder.stages.1.layers.1.layer.1.convolution.weight",
        "cnn.feature.backbone.res4.0.shortcut.norm.bias":
            "cnn.resnet.encoder.stages.2.layers.0.shortcut.normalization.bias",
        "cnn.grid_encoder.0.weight": "cnn.grid_encoder.0.weight",
        "transformer.bert.embeddings.LayerNorm.gamma": "bert.embeddings.LayerNorm.weight",
        "transformer.bert.encoder.layer.1.output.LayerNorm.beta": "bert.encoder.layer.1.output.LayerNorm.bias",
        "transformer.bert.encoder.layer.0.attention.self.key.weight": "bert.encoder.layer.0.attention.self.key.weight",
        "transformer.bert.visual_embeddings.row_position_embeddings.weight":
            "visual_embeddings.row_position_embeddings.weight",
        "transformer.bert.pooler.dense.bias": "bert.pooler.dense.bias",
    }
    for source, target in pairs.items():
        assert torch.equal(sd[target], src[source]), (source, target)


def test_full_size_original_checkpoint_imports_completely():
    cfg = load_config("msrvtt_ret").model
    model = ClipBert(cfg)
    shapes = original_state_shapes(cfg, num_labels=2, old_ln_names=False)
    # stride-0 views: full shapes without allocating 600 MB; keys with a DDP/Horovod "module." prefix
    src = {f"module.{k}": torch.zeros(()).expand(s) for k, s in shapes.items()}
    src["module.cnn.grid_encoder.0.weight"] = torch.full(shapes["cnn.grid_encoder.0.weight"], 0.5)
    report = import_original_checkpoint(model, src)
    assert not report.unexpected and not report.mismatched
    assert all(k.startswith(("text_proj.", "video_proj.", "logit_scale")) for k in report.missing)
    assert len(report.loaded) == len(src) - len(report.skipped)
    assert sum(k.startswith("cnn.resnet.") for k in report.loaded) == 5 * 53  # 53 convs of R-50, 5 tensors each
    assert torch.equal(model.cnn.grid_encoder[0].weight, src["module.cnn.grid_encoder.0.weight"])
    assert (model.bert.encoder.layer[11].output.dense.weight == 0).all()


def test_mismatched_head_is_reported_not_loaded():
    cfg = micro_cfg(head="qa", num_answers=7)
    model = ClipBert(cfg)
    before = model.classifier[2].weight.clone()
    report = import_original_checkpoint(model, random_state(original_state_shapes(cfg, num_labels=5)))
    assert report.mismatched == {"classifier.2.weight": ((5, 64), (7, 64)), "classifier.2.bias": ((5,), (7,))}
    assert "classifier.0.weight" in report.loaded and torch.equal(model.classifier[2].weight, before)
    assert "mismatched 2" in report.summary() and "classifier.2.weight" in report.summary()


def test_checkpoint_of_another_size_is_an_error_not_a_silent_skip():
    model = ClipBert(micro_cfg(hidden_size=48, intermediate_size=96, resnet_hidden_sizes=(8, 16, 24)))
    other = random_state(original_state_shapes(micro_cfg(vocab_size=60, resnet_embedding_size=4,
                                                         resnet_hidden_sizes=(12, 20, 28))))
    with pytest.raises(ValueError, match="no weight could be loaded.*mismatched"):
        import_original_checkpoint(model, other)


def test_unknown_keys_are_reported():
    cfg = micro_cfg()
    src = random_state(original_state_shapes(cfg))
    src["transformer.bert.some_new_thing.weight"] = torch.zeros(3)
    src["cnn.feature.backbone.res2.0.conv1.bias"] = torch.zeros(8)  # detectron2 conv bias: no target here
    report = import_original_checkpoint(ClipBert(cfg), src)
    assert sorted(report.unexpected) == ["cnn.feature.backbone.res2.0.conv1.bias",
                                         "transformer.bert.some_new_thing.weight"]


@pytest.mark.parametrize("key, target", [
    ("module.cnn.feature.backbone.res5.2.conv3.norm.weight",
     "cnn.resnet.encoder.stages.3.layers.2.layer.2.normalization.weight"),
    ("backbone.res2.0.shortcut.weight", "cnn.resnet.encoder.stages.0.layers.0.shortcut.convolution.weight"),
    ("transformer.classifier.2.bias", "classifier.2.bias"),
    ("transformer.bert.embeddings.position_ids", None),
])
def test_key_mapping_table(key, target):
    assert map_original_key(key)[0] == target


def test_pt_file_loads_with_weights_only(tmp_path):
    cfg = micro_cfg()
    src = random_state(original_state_shapes(cfg))
    path = tmp_path / "clipbert_image_text_pretrained.pt"
    torch.save(src, path)
    report = import_original_checkpoint(ClipBert(cfg), path)
    assert len(report.loaded) > 0 and not report.unexpected
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": EvilPayload()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        import_original_checkpoint(ClipBert(cfg), evil)


class EvilPayload:
    def __reduce__(self):
        return (print, ("this must never run",))


# ----------------------------------------------------------------------------------------------- our format
def test_safetensors_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    cfg = Config(model=micro_cfg(head="qa", num_answers=9))
    cfg.data.num_answers = 9
    model = ClipBert(cfg.model)
    with torch.no_grad():
        model.cnn.resnet.embedder.embedder.normalization.running_mean.uniform_()  # a buffer, not a parameter
    save_checkpoint(model, cfg, tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"model.safetensors", "config.json"}
    loaded, loaded_cfg = load_checkpoint(tmp_path / "ckpt")
    assert loaded_cfg == cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    frames = torch.randint(0, 256, (1, 2, 1, 3, 64, 64), dtype=torch.uint8)
    ids, mask = torch.randint(5, 50, (1, 1, 6)), torch.ones(1, 1, 6, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(model.eval()(frames, ids, mask), loaded.eval()(frames, ids, mask))


def test_checkpoint_saved_with_earlier_sampling_key_names_still_loads(tmp_path):
    import json

    cfg = Config(model=micro_cfg())
    cfg.sampling.clip_fps, cfg.sampling.frames_per_clip, cfg.sampling.dense_frames = 1.0, 3, 5
    save_checkpoint(ClipBert(cfg.model), cfg, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    saved = json.loads(path.read_text())
    sampling = saved["sampling"]
    for old, new in [("fps", "clip_fps"), ("num_frames", "frames_per_clip"), ("dense_num_frames", "dense_frames")]:
        sampling[old] = sampling.pop(new)
    path.write_text(json.dumps(saved))
    assert load_checkpoint(tmp_path / "ckpt")[1] == cfg
    assert read_checkpoint_config(tmp_path / "ckpt") == cfg
    assert checkpoint_problem(str(tmp_path / "ckpt")) is None


def test_build_model_from_pretrained_dirs_and_checkpoint(tmp_path):
    cfg = micro_cfg()
    torch.manual_seed(1)
    bert = BertForPreTraining(bert_config(cfg))  # "bert." prefixed keys plus pretraining heads
    bert.save_pretrained(tmp_path / "bert")
    resnet = ResNetForImageClassification(resnet_config(cfg))  # "resnet." prefixed keys plus a classifier
    resnet.save_pretrained(tmp_path / "resnet")
    model, reports = build_model(dataclasses.replace(cfg, bert_dir=str(tmp_path / "bert"),
                                                     resnet_dir=str(tmp_path / "resnet")))
    bert_report, resnet_report = reports
    assert not bert_report.missing and not bert_report.mismatched and not bert_report.unexpected
    assert not resnet_report.missing and not resnet_report.mismatched and not resnet_report.unexpected
    assert torch.equal(model.bert.encoder.layer[1].attention.self.query.weight,
                       bert.bert.encoder.layer[1].attention.self.query.weight)
    assert torch.equal(model.cnn.resnet.encoder.stages[2].layers[0].layer[0].convolution.weight,
                       resnet.resnet.encoder.stages[2].layers[0].layer[0].convolution.weight)
    save_checkpoint(model, cfg, tmp_path / "ours")
    again, reports = build_model(dataclasses.replace(cfg, init_checkpoint=str(tmp_path / "ours")))
    assert not reports[0].missing and torch.equal(again.classifier[2].weight, model.classifier[2].weight)
