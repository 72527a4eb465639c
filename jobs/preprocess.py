"""Preprocess raw videos into an LMDB frame store with Ray Data (resumable).

Usage:
    python jobs/preprocess.py --videos data/videos --output data/frames
    python jobs/preprocess.py --videos 'data/**/*.mp4' --output data/frames --fps 4 --max-side 448
    python jobs/preprocess.py --videos list.txt --output data/frames --max-side 768   # TGIF-style configs
    ray job submit --working-dir . -- python jobs/preprocess.py --videos s3://bucket/videos --output /shared/frames

Re-running on the same --output skips stored videos and finishes the rest. Exits 0 when at least one
video is stored; 1 when every video failed, or when the run stopped on a storage error (a full disk: one line
names the path; what was finished is kept, and re-running after the fix completes the store); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys

from clipbert.exit_codes import job_main
from clipbert.data.frames import StoreOptions
from clipbert.logs import setup_logging

logger = logging.getLogger("preprocess")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", required=True, help="directory, glob, list file (one path per line)")
    p.add_argument("--output", required=True, help="frame-store directory")
    p.add_argument("--fps", type=float, default=StoreOptions.max_fps, help="stored frames per second")
    p.add_argument("--max-side", type=int, default=StoreOptions.max_side, help="longer side of stored frames")
    p.add_argument("--jpeg-quality", type=int, default=StoreOptions.jpeg_quality)
    p.add_argument("--videos-per-shard", type=int, default=16, help="videos per write task / LMDB shard")
    p.add_argument("--concurrency", type=int, default=None, help="max concurrent decode tasks")
    p.add_argument("--address", default=None, help="Ray address to join (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray")
    return p.parse_args(argv)


@job_main(logger, "preprocessing")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from clipbert.ray_init import init_ray
    from pipelines.preprocess import run_preprocess

    options = StoreOptions(max_fps=args.fps, max_side=args.max_side, jpeg_quality=args.jpeg_quality)
    init_ray(args.address, args.num_cpus, log_to_driver=False)
    summary = run_preprocess(args.videos, args.output, options, videos_per_shard=args.videos_per_shard,
                             concurrency=args.concurrency)  # a storage error (a full disk) names its path: exit 1
    for line in summary.lines():
        print(line)
    return 0 if summary.store_ok > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
