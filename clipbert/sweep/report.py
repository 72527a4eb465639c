"""A finished (or interrupted) sweep's outputs in STORAGE/NAME/: trials.parquet, best.yaml, best/, sweep.png, and the
ranked table printed at the end. Imports no Ray: clipbert.sweep.run turns Tune's results into TrialRecords.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from clipbert.model.checkpoint import CONFIG_NAME
from clipbert.config_renames import translate_renamed_keys

logger = logging.getLogger(__name__)

STATUSES = ("completed", "stopped_early", "errored", "not_run")  # in ranking order


@dataclasses.dataclass
class TrialRecord:
    """One trial: its swept values, how it ended, its validation curve and its run's final_metrics.json."""

    trial_id: str
    params: dict[str, Any]  # swept key -> value
    status: str  # one of STATUSES
    curve: list[tuple[int, float]]  # (step, validation metric) of every evaluation
    final: dict | None  # final_metrics.json of a completed trial: val (chosen checkpoint), test, step, exported
    error: str = ""  # last line of the error of an errored trial
    run_dir: str = ""  # the trial's Train run

    @property
    def steps(self) -> int:
        return self.curve[-1][0] if self.curve else 0

    def best(self, mode: str) -> float | None:
        values = [v for _, v in self.curve]
        return (max if mode == "max" else min)(values) if values else None

    def test(self, metric: str) -> float | None:
        return ((self.final or {}).get("test") or {}).get(metric)


def ranked(records: list[TrialRecord], mode: str) -> list[TrialRecord]:
    """Completed trials first, by their chosen checkpoint's validation metric, then stopped ones by their best
    evaluation, then the rest."""
    sign = -1.0 if mode == "max" else 1.0

    def key(r: TrialRecord) -> tuple:
        value = r.best(mode)
        return STATUSES.index(r.status), sign * value if value is not None else float("inf")

    return sorted(records, key=key)


def trials_table(records: list[TrialRecord], metric: str, mode: str) -> pd.DataFrame:
    """One row per trial, ranked: swept values, status, steps run, best and last metric, test metrics, error."""
    rows = []
    for rank, r in enumerate(ranked(records, mode), start=1):
        test = (r.final or {}).get("test") or {}
        rows.append({
            "rank": rank, "trial_id": r.trial_id, **r.params, "status": r.status,
            "stopped_early": r.status == "stopped_early", "steps": r.steps,
            f"best_{metric}": r.best(mode), f"last_{metric}": r.curve[-1][1] if r.curve else None,
            "chosen_step": (r.final or {}).get("step"), **{f"test_{k}": v for k, v in test.items()},
            "error": r.error,
        })
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame, metric: str, param_keys: list[str]) -> str:
    """The ranked trials as aligned text."""
    columns = ["rank", "trial_id", *param_keys, "status", "steps", f"best_{metric}", f"test_{metric}"]
    shown = table.reindex(columns=columns)
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


def write_outputs(path: Path, records: list[TrialRecord], *, metric: str, mode: str, max_steps: int) -> pd.DataFrame:
    """Write trials.parquet, best.yaml + best/ (the best completed trial's exported checkpoint) and sweep.png."""
    table = trials_table(records, metric, mode)
    table.to_parquet(path / "trials.parquet", index=False)
    best = next((r for r in ranked(records, mode) if r.status == "completed"), None)
    if best is None:
        logger.warning("no trial completed: no best.yaml or best/ in %s", path)
    else:
        export_best(path, best, metric)
    plot_sweep(path / "sweep.png", records, metric=metric, best=best, max_steps=max_steps)
    return table


def export_best(path: Path, best: TrialRecord, metric: str) -> None:
    """best/ = the trial's exported checkpoint; best.yaml = its full config, accepted by jobs/train.py as is."""
    source = Path(best.final["exported"])
    shutil.rmtree(path / "best", ignore_errors=True)
    shutil.copytree(source, path / "best")
    config = translate_renamed_keys(json.loads((source / CONFIG_NAME).read_text()))
    val = best.final["val"].get(metric)
    test = best.test(metric)
    header = (f"# Best trial {best.trial_id} of the sweep in {path}: validation {metric} {val:.4g} at step "
              f"{best.final['step']}" + (f", test {metric} {test:.4g}" if test is not None else "") + "\n"
              f"# swept: {json.dumps(best.params)}\n# train it again: python jobs/train.py --config best.yaml\n")
    (path / "best.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))


def plot_sweep(out: Path, records: list[TrialRecord], *, metric: str, best: TrialRecord | None,
               max_steps: int) -> None:
    """The validation metric of every trial against optimiser steps; early stops marked with an x."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s", out.name)
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in records:
        if not r.curve:
            continue
        steps, values = zip(*r.curve)
        is_best = best is not None and r.trial_id == best.trial_id
        ax.plot(steps, values, marker=".", linewidth=2.2 if is_best else 1.0, alpha=1.0 if is_best else 0.7,
                label=f"{r.trial_id} (best)" if is_best else None)
        if r.status == "stopped_early":
            ax.plot(steps[-1], values[-1], "x", color="black", markersize=8)
    ax.plot([], [], "x", color="black", label="stopped early (ASHA)")
    ax.set_xlim(0, max_steps * 1.02)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"{len(records)} trials")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
