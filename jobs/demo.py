"""The whole pipeline on a corpus it makes itself: synthesize -> preprocess (Ray Data) -> train (Ray Train) -> metrics.

Usage:
    python jobs/demo.py --workdir demo_run            # what `make demo` runs (a few minutes on 2 cores)
    python jobs/demo.py --workdir demo_run --videos 600 --epochs 30

Each step is skipped when its output already exists, so a second run goes straight to training.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from clipbert.config import load_config
from clipbert.logs import setup_logging

logger = logging.getLogger("demo")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("demo_run"))
    p.add_argument("--videos", type=int, default=160, help="videos in the synthetic corpus (80/10/10 split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=8, help="training epochs")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--config", default="synthetic_tiny", help="synthetic_tiny (retrieval) or synthetic_tiny_qa")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    import ray

    from clipbert.frames import FrameStore
    from clipbert.synthetic import synthesize_corpus
    from clipbert.training import keep_idle_workers, run_training
    from pipelines.preprocess import run_preprocess

    corpus = args.workdir / "corpus"
    if not (corpus / "corpus.json").exists():
        logger.info("1/3 synthesizing %d videos into %s", args.videos, corpus)
        synthesize_corpus(corpus, n_videos=args.videos, seed=args.seed, workers=2)
    keep_idle_workers()  # data workers survive between epochs of the local Ray started below
    ray.init(ignore_reinit_error=True, log_to_driver=True)
    logger.info("2/3 preprocessing into %s", corpus / "frames")
    summary = run_preprocess(str(corpus / "videos"), str(corpus / "frames"))
    print("\n".join(summary.lines()))
    store = FrameStore(corpus / "frames")
    first = store.ids()[0]
    frames = store.get(first, range(min(3, store.num_frames(first))))
    print(f"frame store: {len(store)} videos; {first}: {store.num_frames(first)} frames at {store.fps(first):g} fps, "
          f"get(..., [0, 1, 2]) -> {frames.shape} {frames.dtype}")
    logger.info("3/3 training %s with %d workers", args.config, args.num_workers)
    cfg = load_config(args.config, [f"data.root={corpus.resolve()}", f"optim.num_epochs={args.epochs}",
                                    f"train.num_workers={args.num_workers}"])
    final = run_training(cfg, storage_path=str((args.workdir / "runs").resolve()), name=args.config)
    best = {k: round(v, 2) for k, v in final["best"].items() if isinstance(v, (int, float))}
    print("best validation metrics:", json.dumps(best, indent=2))
    print(f"best checkpoint exported to {final['exported']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
