"""Sweep search spaces: a YAML file mapping config keys to distributions, checked against the config schema.

    optim.lr: {loguniform: [1.0e-5, 1.0e-3]}
    optim.cnn_lr: {loguniform: [1.0e-5, 1.0e-3]}
    sampling.train_n_clips: {choice: [1, 2, 4]}
    model.consensus: {grid: [mean, max, lse]}

Distributions: ``choice`` (values), ``grid`` (values, every one tried: Tune's grid search), ``uniform`` and
``loguniform`` ([low, high], float keys), ``randint`` ([low, high), int keys). Everything is checked before a
sweep starts: an unknown key, a value the key's type refuses, bad bounds. This module imports no Ray; ``to_tune``
turns a checked space into Tune's search-space objects.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from pathlib import Path
from typing import Any

import yaml

from clipbert.config import SECTIONS, Config, all_keys, coerce_value, config_from_tree, unknown_key_error

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SCHEDULE_KEYS = ("optim.num_epochs", "optim.batch_size", "optim.grad_accum_steps")  # change a trial's step count


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One swept key: ``kind`` is one of DISTRIBUTIONS; ``args`` the values (choice, grid) or the bounds."""

    key: str
    kind: str
    args: tuple


def field_type(key: str) -> Any:
    """The schema's type of a dotted key (e.g. float for "optim.lr")."""
    section, name = key.split(".", 1)
    return typing.get_type_hints(SECTIONS[section])[name]


def parse_dimension(key: str, spec: Any) -> Dimension:
    """Check one ``key: {distribution: args}`` entry against the schema; ValueError names the key and the fault."""
    if key not in all_keys():
        raise unknown_key_error(key)
    if not (isinstance(spec, dict) and len(spec) == 1):
        raise ValueError(f"{key}: expected one distribution, e.g. {{choice: [...]}}, got {spec!r}; "
                         f"distributions: {', '.join(DISTRIBUTIONS)}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"{key}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise ValueError(f"{key}: {kind} needs a non-empty list, got {args!r}")
    tp = field_type(key)
    if kind in ("choice", "grid"):
        return Dimension(key, kind, tuple(coerce_value(v, tp, key) for v in args))
    if len(args) != 2:
        raise ValueError(f"{key}: {kind} needs [low, high], got {args!r}")
    want = int if kind == "randint" else float
    if tp is not want:
        raise ValueError(f"{key}: {kind} draws {want.__name__}s but the key is a {getattr(tp, '__name__', tp)}")
    low, high = (coerce_value(v, want, key) for v in args)
    if not low < high:
        raise ValueError(f"{key}: {kind} bounds must satisfy low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{key}: loguniform bounds must be > 0, got {args!r}")
    return Dimension(key, kind, (low, high))


def load_space(path: str | Path) -> list[Dimension]:
    """The checked dimensions of a space YAML file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--space: no such file: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: a space must map config keys to distributions, e.g. optim.lr: {{loguniform: "
                         "[1.0e-5, 1.0e-3]}")
    dims = []
    for key, spec in raw.items():
        try:
            dims.append(parse_dimension(str(key), spec))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return dims


def to_tune(dims: list[Dimension]) -> dict[str, Any]:
    """Tune's param_space: one flat entry per dotted key."""
    from ray import tune

    make = {"choice": lambda a: tune.choice(list(a)), "grid": lambda a: tune.grid_search(list(a)),
            "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(*a)}
    return {d.key: make[d.kind](d.args) for d in dims}


def plain(value: Any) -> Any:
    """A Python scalar from what a searcher hands out (numpy scalars included)."""
    return value.item() if hasattr(value, "item") else value


def apply_params(tree: dict, params: dict[str, Any]) -> dict:
    """A copy of a config tree (load_config_tree) with a trial's values set at their dotted keys."""
    out = {section: dict(values) for section, values in tree.items()}
    for key, value in params.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = plain(value)
    return out


def trial_config(tree: dict, params: dict[str, Any]) -> Config:
    """The validated Config of one trial."""
    return config_from_tree(apply_params(tree, params))


def extremes(dim: Dimension) -> tuple:
    """The values of a dimension that bound what it can reach (every listed value, or the two bounds)."""
    if dim.kind in ("choice", "grid"):
        return dim.args
    low, high = dim.args
    return (low, high - 1) if dim.kind == "randint" else (low, high)


def schedule_corners(tree: dict, dims: list[Dimension]) -> list[dict]:
    """Config trees at every combination of the extreme values of the swept schedule keys (epochs, batch size,
    accumulation): the longest trial of a sweep is one of them."""
    swept = [d for d in dims if d.key in SCHEDULE_KEYS]
    combos = itertools.product(*(extremes(d) for d in swept))
    return [apply_params(tree, {d.key: v for d, v in zip(swept, combo)}) for combo in combos]
