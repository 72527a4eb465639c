"""Build a FAISS retrieval index of a frame store's videos: embed dense clips on Ray Data, then index them.

Usage:
    python jobs/build_index.py --checkpoint runs/synthetic_tiny/best --frame-store data/synth/frames --output data/index
    python jobs/build_index.py --checkpoint RUN/best --frame-store STORE --output DIR --granularity clips --clips 16 \
        --videos data/synth/txt/retrieval_test.jsonl --memory-budget 4G --index-type auto
    ray job submit --working-dir . -- python jobs/build_index.py --checkpoint /shared/runs/msrvtt_ret/best \
        --frame-store /shared/msrvtt/frames --output /shared/msrvtt/index --gpu --num-actors 8

Writes DIR/embeddings/ (Parquet shards of clip and video embeddings; re-running skips embedded videos and adds new
ones) and DIR/index.faiss, DIR/ids.parquet, DIR/index.json (provenance, index type, measured recall).
Exit codes: 0 built, 1 no video could be embedded or a storage error (a full disk: one line names the path; the
finished embedding shards are kept and re-running resumes), 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from clipbert.exit_codes import FAILED, job_main
from clipbert.logs import setup_logging

logger = logging.getLogger("build_index")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="exported checkpoint directory (RUN/best) with ITC heads")
    p.add_argument("--frame-store", required=True, help="frame store of the gallery videos")
    p.add_argument("--output", required=True, help="index directory")
    p.add_argument("--granularity", choices=("video", "clips"), default="video",
                   help="one vector per video (clip mean) or one per clip (scores aggregated per video at search)")
    p.add_argument("--clips", type=int, default=None,
                   help="N dense clips per video (default: the checkpoint's sampling.inference_n_clips)")
    p.add_argument("--index-type", default="auto", help="'auto' or any FAISS index_factory string (e.g. HNSW32)")
    p.add_argument("--memory-budget", default="4G", help="memory the index may take, for --index-type auto")
    p.add_argument("--videos", default=None, help="restrict the gallery: a list of ids or a jsonl annotation file")
    p.add_argument("--embeddings", default=None, help="embeddings directory (default: OUTPUT/embeddings)")
    p.add_argument("--num-actors", type=int, default=None, help="model actors (default: one per GPU, or one per CPU)")
    p.add_argument("--batch-size", type=int, default=8, help="videos per model call")
    p.add_argument("--add-tasks", type=int, default=0,
                   help="fill a trained IVF/PQ index in this many parallel Ray tasks (0: in this process)")
    p.add_argument("--gpu", action="store_true",
                   help="one GPU per model actor (bf16); FAISS builds on a GPU whenever faiss-gpu sees one")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    return p.parse_args(argv)


def _checked(args: argparse.Namespace) -> tuple[list[str] | None, int]:
    """Driver-side checks before Ray starts: the checkpoint, the store, the list, the budget."""
    from clipbert.model.checkpoint import check_retrieval_checkpoint
    from clipbert.data.annotations import read_video_list
    from clipbert.data.frames import FrameStore
    from clipbert.retrieval.index_choice import parse_memory

    check_retrieval_checkpoint(args.checkpoint)
    FrameStore(args.frame_store)
    if args.clips is not None and args.clips < 1:
        raise ValueError(f"--clips must be >= 1, got {args.clips}")
    return (read_video_list(args.videos) if args.videos else None), parse_memory(args.memory_budget)


@job_main(logger, "building the index")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    video_ids, budget = _checked(args)
    from clipbert.model.checkpoint import contrastive_logit_scale
    from clipbert.retrieval.embeddings import read_header, read_rows
    from clipbert.retrieval.index import VideoIndex
    from clipbert.ray_init import init_ray
    from pipelines.embed import run_embed
    from pipelines.index import sharded_add

    init_ray(args.address, args.num_cpus, log_to_driver=False)
    emb_dir = args.embeddings or os.path.join(args.output, "embeddings")
    summary = run_embed(args.checkpoint, args.frame_store, emb_dir, n_clips=args.clips, video_ids=video_ids,
                        num_actors=args.num_actors, use_gpu=args.gpu, batch_size=args.batch_size)
    for line in summary.lines():
        print(line)
    if not read_rows(emb_dir, ["status"]).column("status").to_pylist().count("ok"):
        logger.error("no video of %s could be embedded (see the failures above)", args.frame_store)
        return FAILED
    provenance = {**read_header(emb_dir), "embeddings": os.path.abspath(emb_dir)}
    index = VideoIndex.build(emb_dir, args.output, granularity=args.granularity, memory_budget=budget,
                             factory=args.index_type, video_ids=video_ids, provenance=provenance,
                             logit_scale=contrastive_logit_scale(args.checkpoint),
                             add_fn=sharded_add(args.add_tasks) if args.add_tasks > 0 else None)
    info = index.info
    print(f"index {args.output}: {info['factory']} over {info['vectors']:,} {info['granularity']} vectors "
          f"of {info['videos']:,} videos, recall@10 {info['recall_at_10']:.3f}, built in "
          f"{info['build_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
