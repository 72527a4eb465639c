"""Finetune ClipBERT end to end with sparse clip sampling on Ray Train.

Usage:
    python jobs/train.py --config synthetic_tiny --set data.root=demo_run/corpus --num-workers 2
    python jobs/train.py --config msrvtt_ret --set data.root=/shared/msrvtt --set model.init_checkpoint=/shared/clipbert_image_text_pretrained.pt \
        --num-workers 8 --gpu --storage-path s3://bucket/runs --name msrvtt_ret
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/train.py --config msrvtt_ret ...

Plain `python` starts a local Ray; under `ray job submit` (RAY_ADDRESS set) or with --address it joins that
cluster. Re-running with the same --storage-path and --name resumes from the last checkpoint. The run exports the
checkpoint chosen on validation to STORAGE/NAME/best/, evaluates it once on data.test_file (when set) and writes
both metrics, `val` and `test`, to STORAGE/NAME/final_metrics.json. Every input (the frame store, the tokenizer,
each annotation file, model.init_checkpoint) is checked before Ray starts: a bad one exits 2 at once, naming it.
Exit codes: 0 done, 1 training failed, 2 bad configuration or input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from clipbert.config import load_config
from clipbert.exit_codes import job_main
from clipbert.logs import setup_logging

logger = logging.getLogger("train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="preset name (clipbert/presets) or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=1e-4")
    p.add_argument("--num-workers", type=int, default=None, help="training workers (default: train.num_workers)")
    p.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="one GPU per worker")
    p.add_argument("--no-gpu", dest="gpu", action="store_false")
    p.add_argument("--storage-path", default=os.path.abspath("runs"), help="directory or URI for checkpoints")
    p.add_argument("--name", default=None, help="run name (default: the config name)")
    p.add_argument("--address", default=None,
                   help="Ray address, 'auto' for a `ray start` cluster here (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    return p.parse_args(argv)


@job_main(logger, "training")
def main(argv: list[str] | None = None, *, task: str | None = None) -> int:
    """Run the job; ``task``: the data.task the config must have (jobs/pretrain.py passes "pretrain")."""
    args = parse_args(argv)
    setup_logging()
    overrides = list(args.set)
    if args.num_workers is not None:
        overrides.append(f"train.num_workers={args.num_workers}")
    if args.gpu is not None:
        overrides.append(f"train.use_gpu={args.gpu}")
    cfg = load_config(args.config, overrides)
    if task is not None and cfg.data.task != task:
        raise ValueError(f"--config {args.config} is a data.task={cfg.data.task} config; this job needs "
                         f"data.task={task}")
    from clipbert.training.run import keep_idle_workers, prepare_run, run_training

    name = args.name or os.path.splitext(os.path.basename(args.config))[0]
    storage = args.storage_path if "://" in args.storage_path else os.path.abspath(args.storage_path)
    task = prepare_run(cfg, storage)  # every input path is checked here, before Ray starts
    from clipbert.ray_init import init_ray

    keep_idle_workers()  # only matters when init_ray below starts a local Ray
    init_ray(args.address, args.num_cpus)
    final = run_training(cfg, storage_path=storage, name=name, task=task)
    print(json.dumps({k: final[k] for k in ("val", "test", "exported")}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
