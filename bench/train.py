"""Benchmark: Ray Train throughput (samples/s) and the fraction of step time spent waiting for data, 1 and 2 workers,
each with the automatic torch thread count (train.cpu_threads=0) and with one thread (what Ray alone gives them).

One run makes (or reuses) a synthetic corpus and its frame store under --workdir, reads the --config preset
(default synthetic_tiny) once, then fits it once per (worker count, thread count) on a local Ray. The fits
are cut into --windows windows of whole epochs (at least --window-steps optimiser steps each), with one
evaluation at the end of each. Every evaluation reports ``train_samples_per_s`` (all workers) and
``data_wait_fraction`` (rank 0's time waiting for the next batch) over its window, so both include the data
pipeline's restart at each epoch. The first window also holds the pipeline's start-up: the table shows it
apart from the later ("steady") ones. ``--idle-workers both`` repeats everything with Ray's default limit of
idle worker processes (one per CPU, see training.keep_idle_workers), which jobs/train.py raises for a local Ray.

Usage:
    python bench/train.py --output bench_results
    python bench/train.py --videos 100 --workers 1,2 --idle-workers both --output bench_results
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import corpus, free_port, print_table, write_json  # noqa: E402

from clipbert.config import Config, config_to_dict, load_config  # noqa: E402
from clipbert.logs import setup_logging  # noqa: E402
from clipbert.ray_init import init_ray  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="directory for train.json")
    p.add_argument("--workdir", type=Path, default=Path("bench_results") / "work", help="corpus and runs")
    p.add_argument("--videos", type=int, default=100, help="videos in the synthetic corpus (80/10/10 split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="synthetic_tiny")
    p.add_argument("--windows", type=int, default=4, help="measurement windows per fit (one evaluation each)")
    p.add_argument("--window-steps", type=int, default=10, help="at least this many optimiser steps per window")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--threads", default="0,1", help="comma-separated train.cpu_threads values (0 = automatic: "
                   "the cores shared among the workers; 1 = what Ray alone gives a worker holding 1 CPU or less); "
                   "a value giving a worker count the same threads as an earlier one is skipped")
    p.add_argument("--idle-workers", choices=["raised", "default", "both"], default="raised",
                   help="Ray's idle worker limit: raised as jobs/train.py does, Ray's default, or both")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    return p.parse_args(argv)


def prepare_corpus(workdir: Path, n_videos: int, seed: int) -> Path:
    """Corpus (with its tokenizer) and frame store under workdir (each made once, then reused)."""
    from clipbert.data.text import write_vocab
    from pipelines.preprocess import run_preprocess

    root = corpus(workdir, n_videos, seed)
    if not (root / "tokenizer").exists():
        write_vocab((root / "txt" / "vocab_words.txt").read_text().split(), root / "tokenizer")
    if not (root / "frames" / "manifest.parquet").exists():
        run_preprocess(str(root / "videos"), str(root / "frames"))
    return root


def fit_once(args: argparse.Namespace, base: Config, workers: int, threads: int, storage: str) -> dict:
    """One fit of `base` with `workers` workers of `threads` torch threads each (train.cpu_threads); returns its
    configuration and per-window throughput."""
    from clipbert.training.run import build_trainer, prepare_task, schedule

    cfg = copy.deepcopy(base)
    cfg.train.num_workers, cfg.train.keep_checkpoints, cfg.train.cpu_threads = workers, 1000, threads
    task = prepare_task(cfg)
    steps_per_epoch, _ = schedule(cfg, len(task.train), workers)
    epochs_per_window = math.ceil(args.window_steps / steps_per_epoch)
    cfg.optim.num_epochs = float(epochs_per_window * args.windows)
    cfg.train.eval_every_steps = epochs_per_window * steps_per_epoch
    start = time.perf_counter()
    result = build_trainer(cfg, task, storage_path=storage, name=f"workers_{workers}_threads_{threads}").fit()
    wall = time.perf_counter() - start
    if result.error:
        raise result.error
    reports = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["step"])
    windows = [{k: m[k] for k in ("step", "epoch", "train_samples_per_s", "data_wait_fraction", "eval_s")}
               for m in reports]
    steady = windows[1:] or windows
    total = windows[-1]["step"]
    samples = total * cfg.optim.batch_size * workers * cfg.optim.grad_accum_steps
    return {
        "workers": workers, "threads": threads, "train_rows": len(task.train), "steps": total,
        "epochs": cfg.optim.num_epochs,
        "fit_wall_s": wall, "samples_per_s_fit": samples / wall,
        "samples_per_s_first": windows[0]["train_samples_per_s"], "data_wait_first": windows[0]["data_wait_fraction"],
        "samples_per_s_steady": sum(w["train_samples_per_s"] for w in steady) / len(steady),
        "data_wait_steady": sum(w["data_wait_fraction"] for w in steady) / len(steady),
        "windows": windows, "config": config_to_dict(cfg),
    }


def fits(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(workers, resolved torch threads per worker) to measure, without repeats."""
    from clipbert.training.loop import cpu_threads

    out: list[tuple[int, int]] = []
    for w in (int(v) for v in args.workers.split(",")):
        for fit in ((w, cpu_threads(int(t), w)) for t in args.threads.split(",")):
            if fit not in out:
                out.append(fit)
    return out


def run_mode(args: argparse.Namespace, mode: str, base: Config, storage: str) -> list[dict]:
    """Every worker count on a fresh local Ray whose idle worker limit is `mode` ("raised" or "default")."""
    import ray

    from clipbert.training.run import IDLE_WORKERS_ENV, keep_idle_workers

    os.environ.pop(IDLE_WORKERS_ENV, None)
    if mode == "raised":
        keep_idle_workers()
    init_ray("local", log_to_driver=False, dashboard_port=free_port(), progress_bars=False)
    try:
        return [{"idle_workers": mode, **fit_once(args, base, w, t, f"{storage}/{mode}")} for w, t in fits(args)]
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    import ray

    init_ray("local", include_dashboard=False, log_to_driver=False, progress_bars=False)
    root = prepare_corpus(args.workdir.resolve(), args.videos, args.seed)  # absolute: workers run elsewhere
    ray.shutdown()
    base = load_config(args.config, [f"data.root={root}", *args.set])  # read once: every fit trains the same
    modes = ["raised", "default"] if args.idle_workers == "both" else [args.idle_workers]
    with tempfile.TemporaryDirectory(prefix="bench_train_") as storage:
        results = [r for mode in modes for r in run_mode(args, mode, base, storage)]
    columns = ["idle workers", "workers", "threads", "steps", "epochs", "samples/s steady", "data-wait steady",
               "samples/s 1st window", "data-wait 1st window", "fit wall s", "samples/s incl. start-up"]
    rows = [[r["idle_workers"], r["workers"], r["threads"], r["steps"], r["epochs"], r["samples_per_s_steady"],
             f"{100 * r['data_wait_steady']:.0f}%", r["samples_per_s_first"], f"{100 * r['data_wait_first']:.0f}%",
             r["fit_wall_s"], r["samples_per_s_fit"]] for r in results]
    print_table(f"Ray Train on {args.config} (batch {base.optim.batch_size} per worker), {args.videos}-video "
                f"synthetic corpus, {args.windows} windows", columns, rows)
    write_json(args.output, "train", {"config": args.config, "videos": args.videos, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
