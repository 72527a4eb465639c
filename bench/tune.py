"""Benchmark: an ASHA sweep on 2 cores, the trial-steps it saves, and its best trial against the default preset.

Synthesizes (once) a corpus with held-out validation and test videos and preprocesses it (bench/learn.py's
prepare_corpus), then:

1. runs ``jobs/tune.py`` over ``optim.lr``, ``optim.cnn_lr`` and ``sampling.train_n_clips`` (random search, ASHA on
   validation t2v R@1, one worker per trial, one trial at a time on this machine), every trial on the same
   schedule (``--epochs``);
2. counts the optimiser steps the trials ran against running every trial to the end of its schedule;
3. trains the default ``synthetic_tiny`` preset once with ``jobs/train.py`` on the same corpus and the same
   schedule (the budget each trial gets), and sets its test metrics beside the best trial's. The best trial is
   chosen on validation only; the test split is read once per finished run.

Prints the trials and a comparison table, writes OUT/tune.json and copies the sweep's sweep.png to OUT/tune.png.
Metrics are in percent (chance R@1 = 100 / test videos). The load average is recorded: other work on the machine
slows every trial alike but stretches the wall times.

Usage:
    python bench/tune.py --output bench_results                      # about 30 minutes on 2 cores
    python bench/tune.py --output bench_results --num-samples 4 --epochs 20   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(REPO))

from common import print_table, write_json  # noqa: E402
from learn import prepare_corpus  # noqa: E402

from clipbert.config import load_config_tree  # noqa: E402
from clipbert.sweep.space import trial_config  # noqa: E402
from clipbert.training.run import schedule  # noqa: E402

SPACE = """\
optim.lr: {loguniform: [1.0e-4, 1.0e-3]}
optim.cnn_lr: {loguniform: [1.0e-4, 3.0e-3]}
sampling.train_n_clips: {choice: [1, 2, 4]}
"""
SPACE_KEYS = ("optim.lr", "optim.cnn_lr", "sampling.train_n_clips")
TEST_KEYS = ("t2v_r1", "t2v_r5", "t2v_medr", "itc_t2v_r1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="bench_results", help="where tune.json and tune.png go")
    p.add_argument("--workdir", default="bench_work/tune", help="corpus and run storage")
    p.add_argument("--splits", default="300,50,50", help="TRAIN,VAL,TEST videos of the synthetic corpus")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--max-side", type=int, default=160, help="longer side of the stored frames")
    p.add_argument("--num-samples", type=int, default=8, help="trials")
    p.add_argument("--epochs", type=float, default=40, help="each trial's schedule (and the default preset's)")
    p.add_argument("--eval-every", type=int, default=60, help="optimiser steps between evaluations")
    p.add_argument("--grace-period", type=int, default=120, help="ASHA's first rung (optimiser steps)")
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--search-seed", type=int, default=0, help="seed of the random search")
    return p.parse_args(argv)


def run(cmd: list[str], log: Path) -> float:
    """Run a job to completion, its output to `log`; returns its wall seconds."""
    start = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import pandas as pd

    out, workdir = Path(args.output), Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    splits = tuple(int(x) for x in args.splits.split(","))
    root = prepare_corpus(workdir, splits, args.seed, args.max_side).resolve()
    common = ["--set", f"data.root={root}", "--set", f"optim.num_epochs={args.epochs}",
              "--set", f"train.eval_every_steps={args.eval_every}", "--set", "train.log_every_steps=100",
              "--set", "train.num_workers=1"]
    load_before = os.getloadavg()[0]

    sweeps = (workdir / "sweeps").resolve()
    shutil.rmtree(sweeps / "bench", ignore_errors=True)
    (workdir / "space.yaml").write_text(SPACE)
    print(f"sweep: {args.num_samples} trials of {args.epochs:g} epochs, ASHA grace {args.grace_period} steps, "
          f"reduction factor {args.reduction_factor} ...", flush=True)
    sweep_s = run([sys.executable, "jobs/tune.py", "--config", "synthetic_tiny", "--space", str(workdir / "space.yaml"),
                   *common, "--num-samples", str(args.num_samples), "--scheduler", "asha",
                   "--grace-period", str(args.grace_period), "--reduction-factor", str(args.reduction_factor),
                   "--seed", str(args.search_seed), "--storage-path", str(sweeps), "--name", "bench"],
                  out / "tune_sweep.log")
    trials = pd.read_parquet(sweeps / "bench" / "trials.parquet")
    tree = load_config_tree("synthetic_tiny", [c for c in common if c != "--set"])
    planned = planned_steps(tree, trials, len((root / "txt" / "retrieval_train.jsonl").read_text().splitlines()))
    ran = int(trials.loc[trials["status"] != "errored", "steps"].sum())
    to_the_end = int(sum(planned.values()))

    default_dir = (workdir / "default").resolve()
    shutil.rmtree(default_dir, ignore_errors=True)
    print("default preset, same corpus and schedule ...", flush=True)
    default_s = run([sys.executable, "jobs/train.py", "--config", "synthetic_tiny", *common,
                     "--storage-path", str(default_dir), "--name", "default"], out / "tune_default.log")
    default = json.loads((default_dir / "default" / "final_metrics.json").read_text())
    best = trials.iloc[0]
    best_final = json.loads((sweeps / "bench" / "runs" / best["trial_id"] / "final_metrics.json").read_text())
    load_after = os.getloadavg()[0]

    print_table(f"Trials (ranked on validation t2v_r1; sweep wall {sweep_s / 60:.1f} min)",
                ["rank", "trial", *SPACE_KEYS, "status", "steps", "of", "best val R@1", "test R@1"],
                [[r["rank"], r["trial_id"], *(r[k] for k in SPACE_KEYS), r["status"], r["steps"],
                  planned.get(r["trial_id"]), r["best_t2v_r1"], r.get("test_t2v_r1")] for _, r in trials.iterrows()])
    cut = 1 - ran / to_the_end
    print(f"\nASHA ran {ran:,} trial-steps against {to_the_end:,} for every trial to the end: {100 * cut:.0f}% cut")
    rows = [["best trial " + best["trial_id"], *(best[k] for k in SPACE_KEYS), best_final["val"]["t2v_r1"],
             *(best_final["test"][k] for k in TEST_KEYS), sweep_s / 60],
            ["default preset", *(default_value(tree, k) for k in SPACE_KEYS), default["val"]["t2v_r1"],
             *(default["test"][k] for k in TEST_KEYS), default_s / 60]]
    print_table(f"Best trial against the default preset ({splits[2]} held-out test videos, chance R@1 "
                f"{100 / splits[2]:.0f}); wall min: the whole sweep / the one run",
                ["run", *SPACE_KEYS, "val R@1", *(f"test {k}" for k in TEST_KEYS), "wall min"], rows)
    if (sweeps / "bench" / "sweep.png").exists():
        shutil.copy(sweeps / "bench" / "sweep.png", out / "tune.png")
    write_json(out, "tune", {
        "load_average": [load_before, load_after], "args": vars(args), "space": SPACE,
        "sweep_wall_s": sweep_s, "trial_steps_run": ran, "trial_steps_to_the_end": to_the_end, "cut": cut,
        "trials": json.loads(trials.to_json(orient="records")), "planned_steps": planned,
        "best": {"trial_id": best["trial_id"], "val": best_final["val"], "test": best_final["test"]},
        "default": {"wall_s": default_s, "val": default["val"], "test": default["test"]},
    })
    print(f"load average {load_before:.1f} at the start, {load_after:.1f} at the end")
    return 0


def planned_steps(tree: dict, trials, num_rows: int) -> dict[str, int]:
    """Each trial's whole schedule in optimiser steps (errored trials left out)."""
    out = {}
    for _, r in trials[trials["status"] != "errored"].iterrows():
        cfg = trial_config(tree, {k: r[k] for k in SPACE_KEYS})
        out[r["trial_id"]] = schedule(cfg, num_rows, cfg.train.num_workers)[1]
    return out


def default_value(tree: dict, key: str):
    """The preset's own value of a swept key."""
    section, name = key.split(".", 1)
    return getattr(getattr(trial_config(tree, {}), section), name)


if __name__ == "__main__":
    sys.exit(main())
