"""Benchmark: preprocessing pipeline throughput against the cheapest decode that yields the same stored frames,
and frame-store size.

Every row runs on the same synthetic corpus and the same cores in one run. The reference rows use no Ray: a process
per core, one decoder thread each, workers started and their imports done before timing.
- decode limit, decord: what the pipeline's decoder cannot avoid. decord reads the frame index, the pipeline's own
  ``timed_indices`` picks the stored frames, and ``get_batch`` of those (in the pipeline's chunks) decodes the
  frames the codec needs up to the last stored one and converts only the stored ones to RGB. No resize, JPEG, LMDB.
- decode limit, PyAV skipping unstored non-reference frames: the same stored frames, pixel for pixel, with less
  decoding: frames that no other frame refers to (H.264's disposable B-frames) are skipped unless stored, which
  decord cannot do.
- decode + convert every frame (decord): the former "decode-only limit", which also converts every decoded frame
  to RGB; slower than the pipeline's own decode, so it is shown for comparison only.
- decode_video per video, no Ray: the pipeline's per-video work (probe, decode, resize, JPEG) without Ray Data
  or LMDB: what separates the decode limit from the pipeline apart from Ray.
- pipeline: jobs/preprocess.py's Ray Data pipeline (decode -> subsample -> resize -> JPEG -> LMDB shards ->
  manifest) on a local Ray with the same number of CPUs, timed from listing to the written manifest (not
  ``ray.init``): a first run (cold: Ray starts its worker processes and imports torch and decord in them), a second
  into a fresh store (warm workers, as every block after the first in a long job), and a warm run on 2 videos
  (Ray Data's fixed cost per run). Ray's workers run at the reference processes' priority (nice 0, not Ray's
  default 15, which on a shared machine would hand the CPUs to the references).
Figures are source frames per second per core (wall clock), and source frames per CPU second of the bench's own
processes (the reference workers; Ray's GCS, raylet and workers), which depend less on other work sharing the
machine; the load average is recorded at the start, at the end and after each row. The limit is the faster of the
two decode-limit rows (both yield the stored frames; the bench checks their frame counts against the store); the
ratio is pipeline / limit and the target 0.7. The corpus is large enough that Ray Data's fixed cost per run and
the workers' start-up are small parts of a run.

Usage:
    python bench/preprocess.py --output bench_results                # 1000 videos, 144k source frames, 115 min
    python bench/preprocess.py --videos 100 --output bench_results   # quicker; start-up weighs more in the first run
The first run synthesizes the corpus under --workdir (about 2 CPU-minutes for 1000 videos), later runs reuse it.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import corpus, print_table, write_json  # noqa: E402

from clipbert.data import frames as fs  # noqa: E402
from clipbert.ray_init import init_ray  # noqa: E402

OPTIONS = fs.StoreOptions()  # what the pipeline stores; the reference rows keep the same frames


def decode_kept_decord(path: str) -> tuple[int, int]:
    """The pipeline's decord decode of one video without resize or JPEG: (source frames, stored frames).

    Same reader settings, same kept indices (the pipeline's ``timed_indices``) and same ``get_batch`` chunks as
    ``pipelines.decode._decode_decord``; decord decodes up to each requested frame and converts only those to RGB.
    """
    import decord

    from pipelines.decode import DECODE_CHUNK, timed_indices

    vr = decord.VideoReader(path, num_threads=1)
    n_src = len(vr)
    keep, _, _ = timed_indices(vr.get_frame_timestamp(range(n_src))[:, 0], float(vr.get_avg_fps()), OPTIONS.max_fps)
    for i in range(0, len(keep), DECODE_CHUNK):
        vr.get_batch(keep[i : i + DECODE_CHUNK].tolist()).asnumpy()  # (t, H, W, 3) RGB
    return n_src, len(keep)


def decode_kept_pyav(path: str, frames: list | None = None) -> tuple[int, int]:
    """The stored frames of one video decoded by PyAV, skipping non-reference frames that are not stored:
    (source frames, stored frames). Appends the RGB frames (H, W, 3) to ``frames`` when given.

    Frames are numbered in presentation order as decord numbers them, and picked by the pipeline's
    ``timed_indices``; the decoder is told per packet to skip it when it is a non-reference frame nobody stores.
    """
    import av
    import numpy as np

    from pipelines.decode import timed_indices

    with av.open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = 1
        packets = [p for p in container.demux(stream) if p.size]
        pts = np.sort(np.array([p.pts for p in packets], np.int64))  # (n_src,) presentation order
        times = (pts - pts[0]) * float(stream.time_base)  # (n_src,) seconds
        keep, _, _ = timed_indices(times, float(stream.average_rate), OPTIONS.max_fps)
        kept_pts = set(pts[keep].tolist())
        stored = 0
        for packet in [*packets, None]:  # None flushes the decoder
            ctx.skip_frame = "DEFAULT" if packet is None or packet.pts in kept_pts else "NONREF"
            for frame in ctx.decode(packet):
                if frame.pts in kept_pts:
                    rgb = frame.to_ndarray(format="rgb24")
                    stored += 1
                    if frames is not None:
                        frames.append(rgb)
    return len(packets), stored


def decode_every_frame(path: str) -> tuple[int, int]:
    """Decode and convert to RGB all frames of one video with decord (one thread): (source frames, 0)."""
    import decord

    vr = decord.VideoReader(path, num_threads=1)
    n = len(vr)
    for i in range(0, n, 32):
        vr.get_batch(list(range(i, min(n, i + 32)))).asnumpy()
    return n, 0


def decode_video_no_ray(path: str) -> tuple[int, int]:
    """The pipeline's per-video work (probe, decode, resize, JPEG) in this process: (source frames, stored frames)."""
    from pipelines.decode import decode_video

    video = decode_video(path, OPTIONS)
    return video.src_frames, len(video.jpegs)


REFERENCES: dict[str, Callable[[str], tuple[int, int]]] = {
    "decode limit: decord, stored frames only (the pipeline's decode)": decode_kept_decord,
    "decode limit: PyAV, skipping unstored non-reference frames": decode_kept_pyav,
    "decode + convert every frame (decord; the former limit)": decode_every_frame,
    "decode_video per video, no Ray (+ probe, resize, JPEG)": decode_video_no_ray,
}
LIMITS = tuple(list(REFERENCES)[:2])  # rows that decode exactly the stored frames; the faster one is the limit


def _warm_worker(path: str, barrier) -> None:
    """Pool initializer: import everything and run every reference once, then wait for the other workers."""
    import av  # noqa: F401  (before decord, as in pipelines/decode.py)
    import torch

    torch.set_num_threads(1)  # as in a Ray task with one CPU (Ray sets OMP_NUM_THREADS=1)
    for fn in REFERENCES.values():
        fn(path)
    barrier.wait()


def tree_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system, plus those of reaped children) of this process and each of its descendants
    (the reference workers; Ray's GCS, raylet and workers), by pid, read from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
        except OSError:  # exited meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()  # fields 3 (state), 4 (ppid), ..., 14-17 (u/s time, children's)
        parent[int(name)] = int(fields[1])
        cpu[int(name)] = sum(int(x) for x in fields[11:15]) / tick
    tree, todo = {os.getpid()}, [os.getpid()]
    while todo:
        pid = todo.pop()
        for child in [c for c, p in parent.items() if p == pid and c not in tree]:
            tree.add(child)
            todo.append(child)
    return {pid: cpu[pid] for pid in tree if pid in cpu}


class Measure:
    """Wall seconds, CPU seconds of this process tree, and the 1-minute load average at the end, of a with-block.

    CPU seconds do not depend on how many other processes share the machine (apart from cache and frequency effects);
    wall seconds do. A process of the tree that exits inside the block leaves its time in its parent's (reaped
    children), so it counts in full, including any time it spent before the block.
    """

    def __enter__(self) -> "Measure":
        self.cpu_before, self.start = tree_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
        after = tree_cpu_seconds()
        self.cpu_seconds = sum(v - self.cpu_before.get(pid, 0.0) for pid, v in after.items())
        self.loadavg = os.getloadavg()[0]

    def record(self) -> dict:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "loadavg_after": self.loadavg}


def references(paths: list[str], cpus: int) -> dict[str, dict]:
    """Each reference row over all videos with one process per core: frames, seconds, CPU seconds."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(cpus)
    out = {}
    with ctx.Pool(cpus, initializer=_warm_worker, initargs=(paths[0], barrier)) as pool:
        pool.map(len, [[]] * cpus)  # returns once every worker is past its initializer
        for name, fn in REFERENCES.items():
            with Measure() as m:
                counts = pool.map(fn, paths, chunksize=1)
            out[name] = {"src_frames": sum(c[0] for c in counts), "stored_frames": sum(c[1] for c in counts),
                         **m.record()}
            print(f"{name}: {out[name]}", flush=True)
    return out


def pipeline(paths: list[str], videos_dir: Path, out: Path, cpus: int) -> tuple[dict[str, dict], float]:
    """Run the Ray Data pipeline on a fresh local Ray: cold, warm, then warm on 2 videos (each timed without
    ``ray.init``); returns each run's figures and the seconds ``ray.init`` took."""
    import ray

    from pipelines.preprocess import run_preprocess

    for path in (out, Path(f"{out}_cold"), Path(f"{out}_fixed")):
        shutil.rmtree(path, ignore_errors=True)
    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default, 15, would lose the CPUs to the reference rows
    start = time.perf_counter()
    init_ray("local", cpus, include_dashboard=False, log_to_driver=False)  # never another's Ray
    init_s = time.perf_counter() - start
    runs = {}
    try:
        for name, videos, store in (("pipeline_cold", str(videos_dir), f"{out}_cold"),
                                    ("pipeline", str(videos_dir), str(out)),
                                    ("pipeline_2_videos", paths[:2], f"{out}_fixed")):
            with Measure() as m:
                s = run_preprocess(videos, store, OPTIONS)
            runs[name] = {"src_frames": s.src_frames, "stored_frames": s.frames, "bytes": s.bytes,
                          "videos_ok": s.videos_ok, "videos_failed": s.videos_failed, **m.record(),
                          "seconds": s.seconds}  # the Summary's: from listing to the written manifest
            print(f"{name}: {runs[name]}", flush=True)
        return runs, init_s
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "clipbert_bench")
    p.add_argument("--output", type=Path, default=Path("bench_results"))
    args = p.parse_args(argv)

    root = corpus(args.workdir, args.videos, args.seed)
    load_start = os.getloadavg()
    videos_dir = root / "videos"
    paths = sorted(str(v) for v in videos_dir.iterdir())
    refs = references(paths, args.cpus)
    store = args.workdir / f"store_{args.videos}_{args.seed}"
    runs, init_s = pipeline(paths, videos_dir, store, args.cpus)
    load_end = os.getloadavg()

    rows = {**refs, **runs}
    for r in rows.values():
        r["frames_per_s_per_core"] = r["src_frames"] / r["seconds"] / args.cpus
        r["frames_per_cpu_s"] = r["src_frames"] / r["cpu_seconds"]
        r["cpu_utilisation"] = r["cpu_seconds"] / r["seconds"] / args.cpus  # < 1: idle or taken by other work
    limit_name = max(LIMITS, key=lambda n: refs[n]["frames_per_s_per_core"])
    limit = refs[limit_name]["frames_per_s_per_core"]
    limit_cpu_name = max(LIMITS, key=lambda n: refs[n]["frames_per_cpu_s"])
    limit_cpu = refs[limit_cpu_name]["frames_per_cpu_s"]
    for r in rows.values():
        r["ratio"] = r["frames_per_s_per_core"] / limit
        r["ratio_cpu"] = r["frames_per_cpu_s"] / limit_cpu
    warm = runs["pipeline"]
    same_frames = all(refs[n]["src_frames"] == warm["src_frames"] and refs[n]["stored_frames"] == warm["stored_frames"]
                      for n in LIMITS)
    manifest = fs.read_manifest(store).to_pylist()
    src_minutes = sum(r["src_frames"] / r["src_fps"] for r in manifest if r["status"] == "ok") / 60
    disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    result = {
        "videos": args.videos, "cpus": args.cpus, "options": dataclasses.asdict(OPTIONS),
        "loadavg_start": list(load_start), "loadavg_end": list(load_end),
        "references": refs, **runs,
        "limit": {"row": limit_name, "frames_per_s_per_core": limit},
        "limit_cpu": {"row": limit_cpu_name, "frames_per_cpu_s": limit_cpu},
        "ray_init_seconds": init_s,
        "fixed_cost_share": runs["pipeline_2_videos"]["seconds"] / warm["seconds"],  # Ray Data's per-run fixed cost
        "limits_yield_the_stored_frames": same_frames,
        "ratio": warm["ratio"], "ratio_cold": runs["pipeline_cold"]["ratio"],
        "ratio_cpu": warm["ratio_cpu"], "ratio_cold_cpu": runs["pipeline_cold"]["ratio_cpu"],
        "target_ratio": 0.7,
        "store": {"jpeg_bytes": warm["bytes"], "disk_bytes": disk,
                  "bytes_per_frame": warm["bytes"] / warm["stored_frames"],
                  "jpeg_mb_per_video_minute": warm["bytes"] / 1e6 / src_minutes,
                  "disk_mb_per_video_minute": disk / 1e6 / src_minutes, "source_minutes": src_minutes,
                  "source_mb_per_video_minute": sum(Path(x).stat().st_size for x in paths) / 1e6 / src_minutes},
    }
    labels = {"pipeline_cold": "pipeline, cold workers (first run)",
              "pipeline": "pipeline, warm workers (Ray Data -> LMDB)",
              "pipeline_2_videos": "pipeline, warm, 2 videos (fixed cost per run)"}
    print_table(
        f"Preprocessing, {args.videos} videos, {args.cpus} cores (source frames per second per core, and per CPU "
        f"second; load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end)",
        ["path", "src frames", "stored", "seconds", "frames/s/core", "vs limit", "CPU s", "frames/CPU-s",
         "vs limit", "CPU use", "load after"],
        [[labels.get(name, name), r["src_frames"], r["stored_frames"] or "-", r["seconds"], r["frames_per_s_per_core"],
          r["ratio"], r["cpu_seconds"], r["frames_per_cpu_s"], r["ratio_cpu"], r["cpu_utilisation"],
          r["loadavg_after"]] for name, r in rows.items()],
    )
    print(f"\nlimit: {limit_name} (by CPU time: {limit_cpu_name}); pipeline / limit = {result['ratio']:.2f} warm, "
          f"{result['ratio_cold']:.2f} cold; by CPU time {result['ratio_cpu']:.2f} warm, "
          f"{result['ratio_cold_cpu']:.2f} cold (target {result['target_ratio']}); fixed cost per run "
          f"{runs['pipeline_2_videos']['seconds']:.1f} s = {result['fixed_cost_share']:.1%} of the warm run; "
          f"ray.init {init_s:.1f} s (not counted); limit rows yield the stored frames: {same_frames}")
    s = result["store"]
    print_table(
        f"Frame store (fps {OPTIONS.max_fps}, max side {OPTIONS.max_side}, JPEG q{OPTIONS.jpeg_quality})",
        ["bytes/frame", "JPEG MB/video-min", "disk MB/video-min", "source MB/video-min"],
        [[s["bytes_per_frame"], s["jpeg_mb_per_video_minute"], s["disk_mb_per_video_minute"],
          s["source_mb_per_video_minute"]]],
    )
    write_json(args.output, "preprocess", result)
    return result


if __name__ == "__main__":
    main()
