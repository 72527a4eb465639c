"""Benchmark: Ray Train throughput (samples/s) and the fraction of step time spent waiting for data, 1 and 2 workers.

One run makes (or reuses) a synthetic corpus, its tokenizer and frame store under --workdir, then fits the
--config preset (default synthetic_tiny) once per worker count on a local Ray, with one evaluation per epoch.
Each evaluation reports ``train_samples_per_s`` (all workers) and ``data_wait_fraction`` (rank 0's time
waiting for the next batch) over the steps since the previous one; the first epoch includes the data
pipeline's start-up, so the table shows it apart from the later ("steady") epochs. ``--idle-workers both``
also runs with Ray's default limit of idle worker processes (one per CPU, see training.keep_idle_workers),
which jobs/train.py raises for a local Ray.

Usage:
    python bench/train.py --output bench_results
    python bench/train.py --videos 100 --epochs 4 --workers 1,2 --idle-workers both --output bench_results
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import corpus, print_table, write_json  # noqa: E402

from clipbert.config import config_to_dict, load_config  # noqa: E402
from clipbert.logs import setup_logging  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="directory for train.json")
    p.add_argument("--workdir", type=Path, default=Path("bench_results") / "work", help="corpus and runs")
    p.add_argument("--videos", type=int, default=100, help="videos in the synthetic corpus (80/10/10 split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="synthetic_tiny")
    p.add_argument("--epochs", type=int, default=4, help="epochs per fit (one evaluation each)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--idle-workers", choices=["raised", "default", "both"], default="raised",
                   help="Ray's idle worker limit: raised as jobs/train.py does, Ray's default, or both")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    return p.parse_args(argv)


def prepare_corpus(workdir: Path, n_videos: int, seed: int) -> Path:
    """Corpus, tokenizer and frame store under workdir (each made once, then reused)."""
    from clipbert.text import write_vocab
    from pipelines.preprocess import run_preprocess

    root = corpus(workdir, n_videos, seed)
    if not (root / "tokenizer").exists():
        write_vocab((root / "txt" / "vocab_words.txt").read_text().split(), root / "tokenizer")
    if not (root / "frames" / "manifest.parquet").exists():
        run_preprocess(str(root / "videos"), str(root / "frames"))
    return root


def fit_once(args: argparse.Namespace, root: Path, workers: int, storage: str) -> dict:
    """One fit with `workers` workers; returns its configuration and the per-epoch throughput windows."""
    from clipbert.training import build_trainer, prepare_task, schedule

    base = [f"data.root={root}", f"train.num_workers={workers}", "train.keep_checkpoints=1000"]
    cfg = load_config(args.config, [*base, *args.set, f"optim.num_epochs={args.epochs}"])
    task = prepare_task(cfg)
    steps_per_epoch, total = schedule(cfg, len(task.train), workers)
    cfg.train.eval_every_steps = steps_per_epoch  # one evaluation (= one throughput window) per epoch
    start = time.perf_counter()
    result = build_trainer(cfg, task, storage_path=storage, name=f"workers_{workers}").fit()
    wall = time.perf_counter() - start
    if result.error:
        raise result.error
    reports = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["step"])
    windows = [{k: m[k] for k in ("step", "epoch", "train_samples_per_s", "data_wait_fraction", "eval_s")}
               for m in reports]
    steady = windows[1:] or windows
    samples = total * cfg.optim.batch_size * workers * cfg.optim.grad_accum_steps
    return {
        "workers": workers, "train_rows": len(task.train), "steps": total, "fit_wall_s": wall,
        "samples_per_s_fit": samples / wall,
        "samples_per_s_first_epoch": windows[0]["train_samples_per_s"],
        "data_wait_first_epoch": windows[0]["data_wait_fraction"],
        "samples_per_s_steady": sum(w["train_samples_per_s"] for w in steady) / len(steady),
        "data_wait_steady": sum(w["data_wait_fraction"] for w in steady) / len(steady),
        "windows": windows, "config": config_to_dict(cfg),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mode(args: argparse.Namespace, mode: str, storage: str) -> list[dict]:
    """Every worker count on a fresh local Ray whose idle worker limit is `mode` ("raised" or "default")."""
    import ray

    from clipbert.training import IDLE_WORKERS_ENV, keep_idle_workers

    os.environ.pop(IDLE_WORKERS_ENV, None)
    if mode == "raised":
        keep_idle_workers()
    ray.init(address="local", dashboard_port=_free_port(), log_to_driver=False)  # never another cluster on this host
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        root = prepare_corpus(args.workdir, args.videos, args.seed)
        return [{"idle_workers": mode, **fit_once(args, root, w, f"{storage}/{mode}")}
                for w in (int(w) for w in args.workers.split(","))]
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    modes = ["raised", "default"] if args.idle_workers == "both" else [args.idle_workers]
    with tempfile.TemporaryDirectory(prefix="bench_train_") as storage:
        results = [r for mode in modes for r in run_mode(args, mode, storage)]
    columns = ["idle workers", "workers", "steps", "samples/s steady", "data-wait steady", "samples/s 1st epoch",
               "data-wait 1st epoch", "fit wall s", "samples/s incl. start-up"]
    rows = [[r["idle_workers"], r["workers"], r["steps"], r["samples_per_s_steady"],
             f"{100 * r['data_wait_steady']:.0f}%", r["samples_per_s_first_epoch"],
             f"{100 * r['data_wait_first_epoch']:.0f}%", r["fit_wall_s"], r["samples_per_s_fit"]] for r in results]
    title = f"Ray Train on {args.config}, {args.videos}-video synthetic corpus, {args.epochs} epochs"
    print_table(title, columns, rows)
    write_json(args.output, "train", {"config": args.config, "videos": args.videos, "epochs": args.epochs,
                                      "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
