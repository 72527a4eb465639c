"""Sweep hyperparameters with Ray Tune: many Ray Train trials of the training loop, weak ones stopped early (ASHA).

Usage:
    python jobs/tune.py --config synthetic_tiny --set data.root=demo_run/corpus --space space.yaml --num-samples 8
    python jobs/tune.py --config msrvtt_ret --set data.root=/shared/msrvtt --space space.yaml --gpu \
        --workers-per-trial 2 --storage-path /shared/sweeps --name msrvtt_lr --search optuna
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/tune.py --config msrvtt_ret ...

space.yaml maps config keys to distributions (clipbert/sweep/space.py):
    optim.lr: {loguniform: [1.0e-5, 1.0e-3]}
    sampling.train_n_clips: {choice: [1, 2, 4]}

Everything is checked before Ray starts a trial: the config, the space, the metric, the storage path, and whether
the trials fit the cluster (--max-concurrent defaults to what fits). Re-running the same command (same
--storage-path and --name) resumes the sweep: finished trials are kept, interrupted ones resume from their last
checkpoint. Outputs in STORAGE/NAME/: trials.parquet, best.yaml (`python jobs/train.py --config best.yaml`), best/
(the best trial's exported checkpoint), sweep.png, and runs/<trial_id>/ (each trial's run, with val and test metrics).
Exit codes: 0 done, 1 no trial completed, 2 bad configuration or input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from clipbert.exit_codes import job_main
from clipbert.logs import setup_logging

logger = logging.getLogger("tune")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="preset name (clipbert/presets) or YAML path")
    p.add_argument("--space", required=True, help="YAML file: config key -> distribution")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every trial")
    p.add_argument("--num-samples", type=int, default=8, help="draws of the space (grid points are repeated)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what fits)")
    p.add_argument("--scheduler", default="asha", choices=["asha", "fifo"])
    p.add_argument("--search", default="random", choices=["random", "optuna"])
    p.add_argument("--metric", default=None, help="validation metric (default: the config's train.metric)")
    p.add_argument("--mode", default=None, choices=["max", "min"], help="default: the config's train.metric_mode")
    p.add_argument("--grace-period", type=int, default=None,
                   help="ASHA's first rung in optimiser steps (default: train.eval_every_steps)")
    p.add_argument("--reduction-factor", type=int, default=3, help="ASHA keeps 1 in this many trials per rung")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher's draws")
    p.add_argument("--storage-path", default=os.path.abspath("sweeps"), help="directory for the sweep")
    p.add_argument("--name", default=None, help="sweep name (default: the space file's name)")
    p.add_argument("--gpu", action="store_true", help="one GPU per training worker")
    p.add_argument("--workers-per-trial", type=int, default=None, help="default: train.num_workers")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    return p.parse_args(argv)


@job_main(logger, "the sweep")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from clipbert.sweep.run import SweepSpec, prepare_sweep, run_sweep
    from clipbert.sweep.report import format_table, trials_table

    overrides = list(args.set)
    if args.workers_per_trial is not None:
        overrides.append(f"train.num_workers={args.workers_per_trial}")
    if args.gpu:
        overrides.append("train.use_gpu=True")
    name = args.name or os.path.splitext(os.path.basename(args.space))[0]
    spec = SweepSpec(config=args.config, space=args.space, overrides=overrides, num_samples=args.num_samples,
                     max_concurrent=args.max_concurrent, scheduler=args.scheduler, search=args.search,
                     metric=args.metric, mode=args.mode, storage_path=os.path.abspath(args.storage_path), name=name,
                     grace_period=args.grace_period, reduction_factor=args.reduction_factor, seed=args.seed)
    prepared = prepare_sweep(spec)  # every input is checked here, before Ray starts
    from clipbert.ray_init import init_ray
    from clipbert.training.run import keep_idle_workers

    keep_idle_workers()
    init_ray(args.address, args.num_cpus)
    records = run_sweep(prepared)  # ValueError: the trials do not fit the cluster, or a resume with other arguments
    table = trials_table(records, prepared.metric, prepared.mode)
    print(format_table(table, prepared.metric, [d.key for d in prepared.dims]))
    print(f"sweep outputs in {spec.path}: trials.parquet, sweep.png"
          + (", best.yaml, best/" if (spec.path / "best.yaml").exists() else ""))
    return 0 if any(r.status == "completed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
