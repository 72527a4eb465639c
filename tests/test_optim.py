"""Tests for the optimiser: the original's AdamW parameter groups and the linear warmup / decay schedule."""

import pytest
from test_model_clipbert import micro_cfg

from clipbert.config import OptimConfig
from clipbert.model.clipbert import ClipBert
from clipbert.model.optim import apply_lr, build_optimizer, lr_schedule, param_groups


def test_param_groups_match_original_layout():
    m = ClipBert(micro_cfg())
    cfg = OptimConfig(lr=1e-4, cnn_lr=2e-4, weight_decay=0.01, cnn_weight_decay=0.02, transformer_lr_mul=5.0,
                      transformer_lr_mul_prefix="classifier", cnn_lr_mul=3.0)
    groups = param_groups(m, cfg)
    assert len(groups) == 8
    names = {id(p): n for n, p in m.named_parameters()}
    grouped = [names[id(p)] for g in groups for p in g["params"]]
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)  # each trainable parameter exactly once, frozen ones excluded
    by_name = {g["name"]: [names[id(p)] for p in g["params"]] for g in groups}
    assert by_name["transformer/lr_mul/decay"] == ["classifier.0.weight", "classifier.2.weight"]
    assert by_name["cnn/lr_mul/decay"] == ["cnn.grid_encoder.0.weight"] and not by_name["cnn/lr_mul/no_decay"]
    assert all("bias" in n or "LayerNorm" in n or n == "logit_scale" for n in by_name["transformer/rest/no_decay"])
    assert "bert.embeddings.LayerNorm.weight" in by_name["transformer/rest/no_decay"]
    assert "visual_embeddings.row_position_embeddings.weight" in by_name["transformer/rest/decay"]
    lrs = {g["name"]: (g["lr"], g["weight_decay"]) for g in groups}
    assert lrs["transformer/lr_mul/decay"] == pytest.approx((5e-4, 0.01))
    assert lrs["transformer/rest/no_decay"] == (1e-4, 0.0)
    assert lrs["cnn/lr_mul/decay"] == pytest.approx((6e-4, 0.02)) and lrs["cnn/rest/decay"] == (2e-4, 0.02)
    opt = build_optimizer(m, OptimConfig())
    assert opt.defaults["eps"] == 1e-6 and opt.defaults["betas"] == (0.9, 0.98)


@pytest.mark.parametrize("step, expected", [(0, 1e-8), (5, 0.5), (10, 1.0), (55, 0.5), (100, 1e-8), (120, 1e-8)])
def test_lr_schedule_table(step, expected):
    assert lr_schedule(step, 100, 0.1) == pytest.approx(expected)


def test_apply_lr_uses_group_multipliers():
    m = ClipBert(micro_cfg())
    opt = build_optimizer(m, OptimConfig(lr=1e-3, cnn_lr=1e-3, cnn_lr_mul=10.0))
    lrs = apply_lr(opt, 5, 100, 0.1)
    named = dict(zip([g["name"] for g in opt.param_groups], lrs))
    assert named["transformer/rest/decay"] == pytest.approx(5e-4)
    assert named["cnn/lr_mul/decay"] == pytest.approx(5e-3)
