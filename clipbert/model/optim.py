"""The optimiser of a ClipBert model: the original's AdamW parameter groups and its linear warmup / decay schedule."""

from __future__ import annotations

import re

import torch
from torch import nn

from clipbert.config import OptimConfig

NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight", "logit_scale")


def _is_cnn(name: str) -> bool:
    """Whether a parameter name is on the CNN side: anything under a ``cnn.`` module."""
    return re.search(r"(^|\.)cnn\.", name) is not None


def param_groups(model: nn.Module, optim_cfg: OptimConfig) -> list[dict]:
    """The original's 8 AdamW parameter groups, in its order; frozen parameters are left out.

    Groups: transformer {names containing transformer_lr_mul_prefix (lr x transformer_lr_mul), rest} x
    {decay, no-decay}, then CNN {names containing cnn_lr_mul_prefix ("grid_encoder", lr x cnn_lr_mul), rest}
    x {decay, no-decay}. No-decay = names containing "bias", "LayerNorm.weight/bias" (and "logit_scale").
    The CNN side is every parameter under ``cnn.``; everything else is the transformer side. Each group
    carries "base_lr", "lr_mul" and "name" for ``apply_lr``; empty groups are kept so there are always 8.
    """
    o = optim_cfg
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sides = [
        ("transformer", [(n, p) for n, p in named if not _is_cnn(n)], o.lr, o.weight_decay,
         o.transformer_lr_mul, o.transformer_lr_mul_prefix),
        ("cnn", [(n, p) for n, p in named if _is_cnn(n)], o.cnn_lr, o.cnn_weight_decay, o.cnn_lr_mul,
         o.cnn_lr_mul_prefix),
    ]
    groups = []
    for side, members, lr, wd, mul, prefix in sides:
        top = [(n, p) for n, p in members if prefix and prefix in n]
        rest = [(n, p) for n, p in members if not (prefix and prefix in n)]
        for part, part_mul, subset in (("lr_mul", mul, top), ("rest", 1.0, rest)):
            for decay in (True, False):
                params = [p for n, p in subset if any(nd in n for nd in NO_DECAY) != decay]
                groups.append({"params": params, "lr": lr * part_mul, "weight_decay": wd if decay else 0.0,
                               "base_lr": lr, "lr_mul": part_mul,
                               "name": f"{side}/{part}/{'decay' if decay else 'no_decay'}"})
    return groups


def build_optimizer(model: nn.Module, optim_cfg: OptimConfig) -> torch.optim.AdamW:
    """torch AdamW over ``param_groups`` with betas/eps from the config (decoupled decay, bias correction).

    The original's HF-style AdamW differs in two negligible ways: its eps is added before the bias
    correction (an effective eps / sqrt(1 - beta2^t), above 1e-6 only in the first few hundred steps) and
    it decays the weights after the Adam update instead of before (a relative difference of lr * wd).
    """
    return torch.optim.AdamW(param_groups(model, optim_cfg), lr=optim_cfg.lr, betas=tuple(optim_cfg.betas),
                             eps=optim_cfg.eps)


def lr_schedule(step: int, total: int, warmup_ratio: float, base_lr: float = 1.0) -> float:
    """The original's get_lr_sched("linear"): linear warmup over int(warmup_ratio*total) steps, then linear
    decay to 0 at `total`; a non-positive result becomes 1e-8. `step` counts optimiser steps from 1."""
    warmup = int(warmup_ratio * total)
    if step < warmup:
        factor = step / warmup
    elif total > warmup:
        factor = max(0.0, (total - step) / (total - warmup))
    else:
        factor = 0.0
    lr = base_lr * factor
    return lr if lr > 0 else 1e-8


def apply_lr(optimizer: torch.optim.Optimizer, step: int, total: int, warmup_ratio: float) -> list[float]:
    """Set every group's lr to lr_mul * lr_schedule(step, total, warmup_ratio, base_lr); returns the lrs."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr_mul"] * lr_schedule(step, total, warmup_ratio, group["base_lr"])
    return [g["lr"] for g in optimizer.param_groups]
