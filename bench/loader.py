"""Benchmark: sparse clip reads from the frame store against the original ClipBERT's online decode.

All on the same videos, one thread, in one run. Each "clip read" yields the T RGB frames of one clip;
a training sample is N = 8 clips x T = 2 frames at clip fps 2 (MSRVTT retrieval).
- frame store: ``FrameStore.get`` of the N*T sampled stored frames (LMDB read + JPEG decode);
- original: the raw video bytes in LMDB, opened with PyAV from memory and decoded around each clip
  (seek to the clip start's keyframe, decode to the clip end, keep T frames: src/datasets/decoder.py's way);
- dense: PyAV decodes every frame of the video once, then the N clips are taken from it.
Figures are clips per second on one core; the target is frame store / original >= 10.

Usage:
    python bench/loader.py --videos 100 --output bench_results
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import av  # noqa: E402
import lmdb  # noqa: E402
import numpy as np  # noqa: E402
from common import corpus, print_table, write_json  # noqa: E402

from clipbert.data.frames import FrameStore, StoreOptions  # noqa: E402
from clipbert.data.sampling import sample_clips  # noqa: E402

N_CLIPS, T, CLIP_FPS = 8, 2, 2.0


def raw_video_lmdb(videos: list[Path], path: Path) -> lmdb.Environment:
    """The original's vis_db: raw container bytes under the file name without extension."""
    env = lmdb.open(str(path), map_size=1 << 36)
    with env.begin(write=True) as txn:
        for v in videos:
            txn.put(v.stem.encode(), v.read_bytes())
    env.close()
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False)


def _open(data: bytes) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    container = av.open(io.BytesIO(data), metadata_errors="ignore")
    stream = container.streams.video[0]
    stream.thread_type, stream.codec_context.thread_count = "SLICE", 1  # single-threaded, as the original
    return container, stream


def original_clips(data: bytes, rng: np.random.Generator) -> list[np.ndarray]:
    """N random clips, each decoded by re-opening the bytes and seeking to its start (the original's loop)."""
    clips = []
    for _ in range(N_CLIPS):
        container, stream = _open(data)
        src_fps = float(stream.average_rate)
        n_src = stream.frames or int(float(stream.duration * stream.time_base) * src_fps)
        clip_size = T / CLIP_FPS * src_fps  # source frames in one clip
        start = rng.uniform(0, max(n_src - clip_size, 0))
        wanted = np.clip(np.linspace(start, start + clip_size - 1, T).astype(np.int64), 0, n_src - 1)
        ticks = 1 / (src_fps * stream.time_base)  # pts per frame
        start_pts, end_pts = int(wanted[0] * ticks), int(wanted[-1] * ticks)
        container.seek(max(start_pts - 1024, 0), stream=stream, backward=True, any_frame=False)
        frames = {}
        for frame in container.decode(stream):
            index = int(round(frame.pts / ticks))
            if index in wanted:
                frames[index] = frame.to_ndarray(format="rgb24")
            if frame.pts >= end_pts:
                break
        container.close()
        last = frames[max(frames)] if frames else None
        clips.append(np.stack([frames.get(i, last) for i in wanted]))  # (T, H, W, 3)
    return clips


def dense_clips(data: bytes, rng: np.random.Generator) -> list[np.ndarray]:
    """Decode every frame once, then take N random clips from the decoded frames."""
    container, stream = _open(data)
    src_fps = float(stream.average_rate)
    decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    container.close()
    clip_size = T / CLIP_FPS * src_fps
    clips = []
    for _ in range(N_CLIPS):
        start = rng.uniform(0, max(len(decoded) - clip_size, 0))
        idx = np.clip(np.linspace(start, start + clip_size - 1, T).astype(np.int64), 0, len(decoded) - 1)
        clips.append(np.stack([decoded[i] for i in idx]))
    return clips


def store_clips(store: FrameStore, video_id: str, rng: np.random.Generator, min_side: int = 0) -> np.ndarray:
    """N sampled clips from the frame store: uint8 (N, T, H, W, 3)."""
    n_stored, stored_fps = store.n_stored(video_id), store.stored_fps(video_id)
    clips = sample_clips(n_stored, stored_fps, n_clips=N_CLIPS, frames_per_clip=T, clip_fps=CLIP_FPS, mode="train",
                         rng=rng)
    frames = store.get(video_id, clips.frame_indices.reshape(-1), min_side=min_side)  # (N*T, H, W, 3)
    return frames.reshape(N_CLIPS, T, *frames.shape[1:])


def measure(name: str, ids: list[str], read: Callable[[str, np.random.Generator], object], min_seconds: float) -> dict:
    """Clips per second of ``read`` over the videos, repeated until ``min_seconds`` have passed."""
    rng = np.random.default_rng(0)
    clips, start = 0, time.perf_counter()
    while True:
        for vid in ids:
            read(vid, rng)
            clips += N_CLIPS
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return {"path": name, "clips": clips, "seconds": elapsed, "clips_per_s_per_core": clips / elapsed}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-seconds", type=float, default=10.0, help="time each path at least this long")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "clipbert_bench")
    p.add_argument("--output", type=Path, default=Path("bench_results"))
    args = p.parse_args(argv)

    root = corpus(args.workdir, args.videos, args.seed)
    videos = sorted((root / "videos").iterdir())
    store_dir = args.workdir / f"store_{args.videos}_{args.seed}"
    if not (store_dir / "manifest.parquet").exists():
        import ray

        from clipbert.ray_init import init_ray
        from pipelines.preprocess import run_preprocess

        init_ray("local", 2, include_dashboard=False, log_to_driver=False)
        run_preprocess(str(root / "videos"), str(store_dir), StoreOptions())
        ray.shutdown()
    store = FrameStore(store_dir)
    raw_dir = args.workdir / f"raw_lmdb_{args.videos}_{args.seed}"
    raw_dir.mkdir(parents=True, exist_ok=True)
    raw = raw_video_lmdb(videos, raw_dir)
    ids = [v.stem for v in videos if v.stem in store]

    def raw_bytes(vid: str) -> bytes:
        with raw.begin(buffers=False) as txn:
            return txn.get(vid.encode())

    rows = [
        measure("frame store (stored size)", ids, lambda v, r: store_clips(store, v, r), args.min_seconds),
        measure("frame store (JPEG decoded at >= 224 px)", ids,
                lambda v, r: store_clips(store, v, r, min_side=224), args.min_seconds),
        measure("original: PyAV seek + decode per clip", ids,
                lambda v, r: original_clips(raw_bytes(v), r), args.min_seconds),
        measure("dense: PyAV decodes every frame", ids, lambda v, r: dense_clips(raw_bytes(v), r), args.min_seconds),
    ]
    base = rows[2]["clips_per_s_per_core"]
    for row in rows:
        row["vs_original"] = row["clips_per_s_per_core"] / base
    print_table(
        f"Sparse clip reads, N={N_CLIPS} x T={T} at {CLIP_FPS:g} fps, {len(ids)} videos, one thread",
        ["path", "clips", "seconds", "clips/s/core", "vs original"],
        [[r["path"], r["clips"], r["seconds"], r["clips_per_s_per_core"], r["vs_original"]] for r in rows],
    )
    result = {"videos": len(ids), "n_clips": N_CLIPS, "frames_per_clip": T, "clip_fps": CLIP_FPS, "rows": rows,
              "target_vs_original": 10.0}
    write_json(args.output, "loader", result)
    return result


if __name__ == "__main__":
    main()
