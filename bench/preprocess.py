"""Benchmark: preprocessing pipeline throughput against the decode-only limit, and frame-store size.

Both sides run on the same synthetic corpus and the same cores in one run:
- decode-only limit: decord decodes every frame of every video (one thread per process, a process per core),
  no Ray, no resize, no JPEG, no LMDB;
- pipeline: jobs/preprocess.py's Ray Data pipeline (decode -> subsample -> resize -> JPEG -> LMDB shards ->
  manifest) on a local Ray with the same number of CPUs, timed from listing to the written manifest.
Figures are source frames decoded per second per core; the target is pipeline / limit >= 0.7.

Usage:
    python bench/preprocess.py --videos 100 --output bench_results
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import corpus, print_table, write_json  # noqa: E402

from clipbert import frames as fs  # noqa: E402


def decode_every_frame(path: str) -> int:
    """Decode all frames of one video with decord (one thread); return the frame count."""
    import decord

    vr = decord.VideoReader(path, num_threads=1)
    n = len(vr)
    for i in range(0, n, 32):
        vr.get_batch(list(range(i, min(n, i + 32)))).asnumpy()
    return n


def decode_only(paths: list[str], cpus: int) -> tuple[int, float]:
    """(frames decoded, seconds) with one decord process per core."""
    with mp.get_context("spawn").Pool(cpus) as pool:
        pool.map(len, [[]] * cpus)  # start the workers before timing
        start = time.perf_counter()
        frames = sum(pool.map(decode_every_frame, paths, chunksize=1))
        return frames, time.perf_counter() - start


def pipeline(videos_dir: Path, out: Path, cpus: int, options: fs.StoreOptions):
    """Run the Ray Data pipeline twice on a fresh local Ray (timed without ``ray.init``); return both Summaries.

    The first run pays for starting Ray's worker processes and their imports (torch, decord); the second,
    into a fresh store, finds them warm, as every block after the first does in a long job.
    """
    import ray

    from pipelines.preprocess import run_preprocess

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        cold = run_preprocess(str(videos_dir), str(out) + "_cold", options)
        warm = run_preprocess(str(videos_dir), str(out), options)
        return cold, warm
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "clipbert_bench")
    p.add_argument("--output", type=Path, default=Path("bench_results"))
    args = p.parse_args(argv)

    root = corpus(args.workdir, args.videos, args.seed)
    videos_dir = root / "videos"
    paths = sorted(str(v) for v in videos_dir.iterdir())
    options = fs.StoreOptions()
    limit_frames, limit_s = decode_only(paths, args.cpus)
    store = args.workdir / f"store_{args.videos}_{args.seed}"
    for path in (store, Path(str(store) + "_cold")):
        shutil.rmtree(path, ignore_errors=True)
    cold, summary = pipeline(videos_dir, store, args.cpus, options)

    limit_rate = limit_frames / limit_s / args.cpus
    pipe_rate = summary.src_frames / summary.seconds / args.cpus
    cold_rate = cold.src_frames / cold.seconds / args.cpus
    manifest = fs.read_manifest(store).to_pylist()
    src_minutes = sum(r["src_frames"] / r["src_fps"] for r in manifest if r["status"] == "ok") / 60
    disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    result = {
        "videos": args.videos, "cpus": args.cpus, "options": dataclasses.asdict(options),
        "decode_only": {"frames": limit_frames, "seconds": limit_s, "frames_per_s_per_core": limit_rate},
        "pipeline": {"frames": summary.src_frames, "seconds": summary.seconds, "frames_per_s_per_core": pipe_rate,
                     "stored_frames": summary.frames, "videos_ok": summary.videos_ok,
                     "videos_failed": summary.videos_failed},
        "pipeline_cold": {"seconds": cold.seconds, "frames_per_s_per_core": cold_rate},
        "ratio": pipe_rate / limit_rate,
        "ratio_cold": cold_rate / limit_rate,
        "target_ratio": 0.7,
        "store": {"jpeg_bytes": summary.bytes, "disk_bytes": disk, "bytes_per_frame": summary.bytes / summary.frames,
                  "jpeg_mb_per_video_minute": summary.bytes / 1e6 / src_minutes,
                  "disk_mb_per_video_minute": disk / 1e6 / src_minutes, "source_minutes": src_minutes,
                  "source_mb_per_video_minute": sum(Path(x).stat().st_size for x in paths) / 1e6 / src_minutes},
    }
    print_table(
        f"Preprocessing, {args.videos} videos, {args.cpus} cores (source frames decoded per second per core)",
        ["path", "frames", "seconds", "frames/s/core", "vs limit"],
        [["decode-only limit (decord, no Ray)", limit_frames, limit_s, limit_rate, 1.0],
         ["pipeline, cold workers (first run)", cold.src_frames, cold.seconds, cold_rate, result["ratio_cold"]],
         ["pipeline, warm workers (Ray Data -> LMDB)", summary.src_frames, summary.seconds, pipe_rate,
          result["ratio"]]],
    )
    s = result["store"]
    print_table(
        f"Frame store (fps {options.fps}, max side {options.max_side}, JPEG q{options.jpeg_quality})",
        ["bytes/frame", "JPEG MB/video-min", "disk MB/video-min", "source MB/video-min"],
        [[s["bytes_per_frame"], s["jpeg_mb_per_video_minute"], s["disk_mb_per_video_minute"],
          s["source_mb_per_video_minute"]]],
    )
    write_json(args.output, "preprocess", result)
    return result


if __name__ == "__main__":
    main()
