"""Benchmark: embedding throughput of the Ray Data job (pipelines/embed.py) against a plain loop without Ray.

Both embed the same videos of the same frame store with the same model and the same N dense clips of T frames,
in one run, on this machine's cores:
- plain loop: one process, no Ray: for each batch of videos, read and decode the clips (clipbert.data.clips), then
  the model (CNN grid -> clip embeddings), torch on every core: the same work, the best a single process does;
- Ray Data: ``run_embed`` (CPU clip-loading tasks feeding an actor pool holding the model, Parquet shards),
  on a local Ray started before the clock starts; its first run also pays the actors' start-up.
Figures are clips per second; the target is Ray / plain >= 0.9 on a corpus large enough that start-up is small.
The model is the ``synthetic_tiny`` preset with random weights (throughput does not depend on the weights).

Usage:
    python bench/embed.py --output bench_results --frame-store bench_work/search/corpus_400_100_1000_s0/frames
    python bench/embed.py --output bench_results --videos 300    # synthesizes and preprocesses its own corpus
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(REPO))

from common import corpus, print_table, write_json  # noqa: E402

PRESET = "synthetic_tiny"


def frame_store(args: argparse.Namespace, workdir: Path) -> Path:
    """The store to embed: --frame-store, or a synthesized corpus preprocessed once under workdir."""
    if args.frame_store:
        return Path(args.frame_store).resolve()
    root = corpus(workdir, args.videos, seed=3)
    if not (root / "frames" / "manifest.parquet").exists():
        subprocess.run([sys.executable, str(REPO / "jobs" / "preprocess.py"), "--videos", str(root / "videos"),
                        "--output", str(root / "frames"), "--max-side", "160"], check=True, cwd=REPO)
    return root / "frames"


def checkpoint(workdir: Path) -> Path:
    """A random-weight synthetic_tiny checkpoint (its tokenizer path is not used here)."""
    import torch

    from clipbert.model.checkpoint import build_model, save_checkpoint
    from clipbert.config import load_config

    cfg = load_config(PRESET)
    torch.manual_seed(0)
    return save_checkpoint(build_model(cfg.model)[0], cfg, workdir / "random_tiny")


def plain_loop(ckpt: Path, store: Path, videos: list[str], n_clips: int, batch_size: int) -> float:
    """Seconds to embed `videos` in this process without Ray."""
    import torch

    from clipbert.model.checkpoint import load_checkpoint
    from clipbert.data.clips import video_batch
    from clipbert.model.scoring import chunks, clip_embeddings

    model, cfg = load_checkpoint(ckpt)
    model.eval()
    cfg.data.frame_store = str(store)
    start = time.perf_counter()
    with torch.no_grad():
        for s in chunks(len(videos), batch_size):
            frames = torch.from_numpy(video_batch(videos[s], cfg, n_clips=n_clips))  # (b, N, T, 3, S, S)
            clip_embeddings(model, model.encode_grid(frames))
    return time.perf_counter() - start


def ray_job(ckpt: Path, store: Path, out: Path, n_clips: int, batch_size: int, num_actors: int | None,
            cpu_threads: int) -> float:
    """Seconds of run_embed on the already started Ray (a fresh output directory: every video embedded)."""
    from pipelines.embed import run_embed

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = run_embed(str(ckpt), str(store), str(out), n_clips=n_clips, num_actors=num_actors,
                        batch_size=batch_size, cpu_threads=cpu_threads)
    seconds = time.perf_counter() - start
    assert summary.videos_failed == 0, summary.failures[:3]
    return seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="bench_results")
    p.add_argument("--workdir", default="bench_work/embed")
    p.add_argument("--frame-store", default=None, help="embed this store (default: synthesize --videos videos)")
    p.add_argument("--videos", type=int, default=300, help="videos of the synthesized corpus")
    p.add_argument("--clips", type=int, default=4, help="N dense clips per video")
    p.add_argument("--batch-size", type=int, default=8, help="videos per model call (both paths)")
    p.add_argument("--num-actors", type=int, default=None, help="Ray model actors (default: pipelines.embed's)")
    p.add_argument("--cpu-threads", type=int, default=0, help="torch threads per Ray actor (0: the cores it holds)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    store = frame_store(args, workdir)
    ckpt = checkpoint(workdir)
    import ray

    from clipbert.data.frames import FrameStore
    from clipbert.ray_init import init_ray

    videos = FrameStore(store).ids()
    clips = len(videos) * args.clips
    t0 = time.perf_counter()
    init_ray("local", log_to_driver=False, progress_bars=False)
    ray_init_s = time.perf_counter() - t0
    plain, ray_s = [], []
    for _ in range(args.repeats):  # alternate, so that both paths see the same machine load
        plain.append(plain_loop(ckpt, store, videos, args.clips, args.batch_size))
        ray_s.append(ray_job(ckpt, store, workdir / "emb", args.clips, args.batch_size, args.num_actors,
                             args.cpu_threads))
    ray.shutdown()
    rows = [["plain loop (no Ray)", min(plain), clips / min(plain), 1.0],
            ["Ray Data job (run_embed)", min(ray_s), clips / min(ray_s), min(plain) / min(ray_s)]]
    print_table(f"Embedding {len(videos):,} videos x {args.clips} clips ({clips:,} clips), best of {args.repeats}; "
                f"ray.init took {ray_init_s:.1f} s before the clock",
                ["path", "seconds", "clips/s", "vs plain loop"], rows)
    payload = {"frame_store": str(store), "videos": len(videos), "clips_per_video": args.clips, "clips": clips,
               "batch_size": args.batch_size, "plain_s": plain, "ray_s": ray_s, "ray_init_s": ray_init_s,
               "ratio": min(plain) / min(ray_s), "load_avg": os.getloadavg()}
    write_json(args.output, "embed", payload)
    return payload


if __name__ == "__main__":
    main()
