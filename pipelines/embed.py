"""Ray Data batch embedding: frame-store videos -> dense uniform clips -> clip and video embeddings -> Parquet shards.

Stages (each a small callable): the driver lists the ok videos not embedded yet -> ``load_clips`` (N uniform
clips of T frames per video, clipbert.data.clips) -> ``Embedder`` (an actor pool holding the model) -> ``EmbeddingSink``
(each write task writes one Parquet shard atomically). On GPUs, CPU tasks load the clips and one actor per GPU
embeds them with bf16 autocast; on CPUs each actor (CPU_ACTOR_CPUS cores) loads and embeds its own batches.
Resume: a re-run skips every video that has a row in a finished shard, so an interrupted run (a killed driver,
a lost node) loses at most its unfinished shards, and new videos of the store are added; a shard appears only
whole (temporary file, then rename), and a full disk stops the run with OSError naming the path. A video whose
frames cannot be read becomes a
``status=failed`` row with the reason. The output format is clipbert/retrieval/embeddings.py's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import Datasink

from clipbert import faults, storage
from clipbert.model.checkpoint import check_retrieval_checkpoint, checkpoint_hash
from clipbert.config import Config, config_from_dict, config_to_dict
from clipbert.retrieval.embeddings import EMBED_SCHEMA, HEADER_FILE, SHARDS_DIR, read_rows, shard_paths
from clipbert.data.frames import FrameStore

logger = logging.getLogger(__name__)

CPU_ACTOR_CPUS = 1  # cores per CPU model actor, all used by its torch (bench/embed.py on 2 cores: 2 actors x 1 core
# embedded 24,000 clips in 80 s, 1 actor x 2 cores in 93 s)

@dataclasses.dataclass
class EmbedSummary:
    """End-of-run figures of an embedding job."""

    videos_ok: int  # embedded by this run
    videos_failed: int  # failed in this run
    videos_skipped: int  # already embedded by an earlier run
    clips: int  # clips embedded by this run
    seconds: float
    failures: list[tuple[str, str]]  # (video_id, reason) of this run's failures

    def lines(self) -> list[str]:
        rate = self.clips / self.seconds if self.seconds else 0.0
        out = [f"videos: {self.videos_ok} embedded, {self.videos_failed} failed, {self.videos_skipped} already done",
               f"clips: {self.clips} in {self.seconds:.1f} s ({rate:.1f} clips/s)"]
        return out + [f"failed: {vid}: {reason}" for vid, reason in self.failures[:20]]


# ----------------------------------------------------------------------------------------------- stages
def load_clips(batch: dict[str, Any], *, cfg: dict, n_clips: int) -> dict[str, Any]:
    """CPU stage: video ids -> {"video_id", "frames" uint8 (B, N, T, 3, S, S), "error"} ("" when readable).

    A video whose frames cannot be read keeps zero frames and its reason in "error"; the batch goes on.
    """
    from clipbert.data.clips import open_store, video_clips

    c = config_from_dict(cfg)
    store = open_store(c.data.frame_store)
    shape = (n_clips, c.sampling.frames_per_clip, 3, c.model.img_size, c.model.img_size)
    frames, errors = np.zeros((len(batch["video_id"]), *shape), np.uint8), []
    for i, vid in enumerate(batch["video_id"]):
        try:
            frames[i] = video_clips(store, str(vid), c, train=False, n_clips=n_clips)  # (N, T, 3, S, S)
            errors.append("")
        except Exception as e:  # a missing frame, a corrupt JPEG, an unreadable shard: one failed row
            errors.append(f"{type(e).__name__}: {e}")
    return {"video_id": np.asarray(batch["video_id"]), "frames": frames, "error": np.asarray(errors, dtype=object)}


class Embedder:
    """Actor stage holding the model: frames (B, N, T, 3, S, S) -> clip embeddings (B, N, E) and video (B, E).

    With ``load`` (the keyword arguments of ``load_clips``) the actor reads the clips of the batch's video ids
    itself: on CPUs one process per core then loads and embeds, with no frames crossing the object store.
    """

    def __init__(self, checkpoint: str, use_gpu: bool, cpu_threads: int = 0, load: dict | None = None):
        import torch

        from clipbert.model.checkpoint import load_checkpoint

        self.device = torch.device("cuda" if use_gpu else "cpu")
        if cpu_threads > 0:
            torch.set_num_threads(cpu_threads)
        self.model, cfg = load_checkpoint(checkpoint, map_location=self.device)
        self.model.eval()
        self.embed_dim = cfg.model.embed_dim
        self.precision = "bf16" if use_gpu else "fp32"
        self.load = load

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        from clipbert.model.scoring import autocast, clip_embeddings

        if self.load is not None:
            batch = load_clips(batch, **self.load)
        ok = np.asarray([e == "" for e in batch["error"]])
        b, n = batch["frames"].shape[:2]
        clips = np.zeros((b, n, self.embed_dim), np.float32)  # (B, N, E); failed rows stay zero
        video = np.zeros((b, self.embed_dim), np.float32)  # (B, E)
        if ok.any():
            frames = torch.from_numpy(batch["frames"][ok]).to(self.device)
            with torch.no_grad(), autocast(self.device, self.precision):
                c, v = clip_embeddings(self.model, self.model.encode_grid(frames))  # (b', N, E), (b', E)
            clips[ok], video[ok] = c.float().cpu().numpy(), v.float().cpu().numpy()
        return {"video_id": batch["video_id"], "error": batch["error"], "ok": ok,
                "clip_embeddings": clips, "video_embedding": video}


def embedding_rows(batch: dict[str, Any]) -> pa.Table:
    """An Embedder output batch -> EMBED_SCHEMA rows (failed rows keep empty embeddings)."""
    rows = []
    for vid, err, ok, clips, video in zip(batch["video_id"], batch["error"], batch["ok"],
                                          batch["clip_embeddings"], batch["video_embedding"]):
        rows.append({"video_id": str(vid), "status": "ok" if ok else "failed", "error": str(err),
                     "n_clips": len(clips) if ok else 0, "clip_embeddings": clips.tolist() if ok else [],
                     "video_embedding": video.tolist() if ok else []})
    return pa.Table.from_pylist(rows, schema=EMBED_SCHEMA)


class EmbeddingSink(Datasink):
    """Ray Data Datasink: each write task writes its rows to one Parquet shard (temp file, then rename).

    ``fault``: a drill's fault spec (clipbert/faults.py), set from CLIPBERT_EMBED_FAULT by the driver: the write
    task holds before writing its shard.
    """

    def __init__(self, root: str, run_prefix: str, fault: dict | None = None):
        self.root = root
        self.run_prefix = run_prefix
        self.fault = fault

    def write(self, blocks: Iterable[pa.Table], ctx: Any) -> dict:
        tables = [embedding_rows(_columns(block)) for block in blocks]
        table = pa.concat_tables(tables) if tables else EMBED_SCHEMA.empty_table()
        for video_id in table.column("video_id").to_pylist():
            faults.hold_once(self.fault, video_id)
        path = Path(self.root) / SHARDS_DIR / f"{self.run_prefix}-{ctx.task_idx:05d}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        except OSError as e:  # a full disk: no partial shard is left to be taken for a finished one
            tmp.unlink(missing_ok=True)
            raise storage.with_path(e, str(path)) from e
        return {"shard": path.name, "videos": table.num_rows}

    def get_name(self) -> str:
        return "Embeddings"


def _columns(block: pa.Table) -> dict[str, Any]:
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(block).to_batch_format("numpy")


# ----------------------------------------------------------------------------------------------- driver
def _header(checkpoint: str, frame_store: str, cfg: Config, n_clips: int) -> dict[str, Any]:
    return {"checkpoint": os.path.abspath(checkpoint), "checkpoint_hash": checkpoint_hash(checkpoint),
            "frame_store": os.path.abspath(frame_store), "n_clips": n_clips,
            "num_frames": cfg.sampling.frames_per_clip,  # T, frames per clip (the key embedding directories carry)
            "clip_fps": cfg.sampling.clip_fps, "img_size": cfg.model.img_size, "embed_dim": cfg.model.embed_dim}


def _check_header(out: Path, header: dict[str, Any]) -> None:
    """Refuse to resume into embeddings made with another checkpoint or other clips, naming the difference."""
    path = out / HEADER_FILE
    if not path.exists():
        return
    old = json.loads(path.read_text())
    keys = ("checkpoint_hash", "n_clips", "num_frames", "clip_fps", "img_size")
    diffs = [f"{k}: directory has {old.get(k)}, asked {header[k]}" for k in keys if old.get(k) != header[k]]
    if diffs:
        raise ValueError(f"{out} holds embeddings made differently ({'; '.join(diffs)}): use a new output directory")


def gallery_ids(store: FrameStore, video_ids: Sequence[str] | None) -> list[str]:
    """The store's ok videos, restricted to `video_ids` when given (ids not in the store: one warning)."""
    ids = store.ids()
    if not ids:
        raise ValueError(f"frame store {store.root} has no successfully stored videos")
    if video_ids is None:
        return ids
    wanted = dict.fromkeys(video_ids)
    missing = [v for v in wanted if v not in store]
    if missing:
        logger.warning("%d of %d requested videos are not in %s (e.g. %s); embedding the rest",
                       len(missing), len(wanted), store.root, missing[:3])
    kept = [v for v in wanted if v in store]
    if not kept:
        raise ValueError(f"none of the {len(wanted)} requested videos is in frame store {store.root}")
    return sorted(kept)


def run_embed(checkpoint: str, frame_store: str, output: str, *, n_clips: int | None = None,
              video_ids: Sequence[str] | None = None, num_actors: int | None = None, use_gpu: bool = False,
              batch_size: int = 8, cpu_threads: int = 0) -> EmbedSummary:
    """Embed the frame store's videos with a checkpoint's contrastive heads on the current Ray cluster; resumable.

    Args:
        checkpoint: an exported checkpoint directory (model.safetensors + config.json) with contrastive heads.
        frame_store: the frame store to embed.
        output: the embeddings directory (created; re-running resumes).
        n_clips: N dense uniform clips per video (default: the checkpoint's sampling.inference_n_clips).
        video_ids: restrict the gallery to these videos.
        num_actors: model actors (default: one per GPU with use_gpu, else one per CPU_ACTOR_CPUS cores).
        use_gpu: one GPU per actor, bf16 autocast.
        batch_size: videos per model call.
        cpu_threads: torch threads per CPU actor (0 = the cores it holds).
    """
    start = time.perf_counter()
    cfg = check_retrieval_checkpoint(checkpoint)
    store = FrameStore(frame_store)  # FileNotFoundError names a missing store
    cfg.data.frame_store = os.path.abspath(frame_store)
    n_clips = n_clips or cfg.sampling.inference_n_clips
    out = Path(output)
    header = _header(checkpoint, frame_store, cfg, n_clips)
    _check_header(out, header)
    ids = gallery_ids(store, video_ids)
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    storage.write_bytes(str(out / HEADER_FILE), json.dumps(header, indent=2).encode())  # whole or not at all
    for tmp in (out / SHARDS_DIR).glob(".*.tmp"):  # shards an interrupted run was writing
        tmp.unlink()
    done = set(read_rows(out, ["video_id"]).column("video_id").to_pylist())
    todo = [v for v in ids if v not in done]
    logger.info("%d videos in the gallery, %d already embedded, %d to do", len(ids), len(ids) - len(todo), len(todo))
    if todo:
        _embed(todo, cfg, checkpoint, out, n_clips, num_actors, use_gpu, batch_size, cpu_threads)
    return _summarize(out, set(todo), len(ids) - len(todo), time.perf_counter() - start)


def _embed(todo: list[str], cfg: Config, checkpoint: str, out: Path, n_clips: int, num_actors: int | None,
           use_gpu: bool, batch_size: int, cpu_threads: int) -> None:
    """GPU: CPU tasks load clips for GPU actors. CPU: actors of CPU_ACTOR_CPUS cores load and embed their batches."""
    resources = ray.cluster_resources()
    if use_gpu and resources.get("GPU", 0) < 1:
        raise ValueError("--gpu asked, but the Ray cluster has no GPUs")
    cpus = max(1, int(resources.get("CPU", 1)))
    actor_cpus = 0 if use_gpu else min(CPU_ACTOR_CPUS, cpus)
    if num_actors is None:
        num_actors = int(resources["GPU"]) if use_gpu else max(1, cpus // actor_cpus)
    load = {"cfg": config_to_dict(cfg), "n_clips": n_clips}
    n_blocks = max(1, min(len(todo), math.ceil(len(todo) / (4 * batch_size))))
    ds = ray.data.from_items([{"video_id": v} for v in todo], override_num_blocks=n_blocks)
    ds.context.op_resource_reservation_enabled = False  # no CPUs held back for stages that are not running
    if use_gpu:
        ds = ds.map_batches(load_clips, batch_size=batch_size, fn_kwargs=load)
    ds = ds.map_batches(Embedder, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=num_actors),
                        num_gpus=1 if use_gpu else 0, num_cpus=actor_cpus,
                        fn_constructor_kwargs={"checkpoint": os.path.abspath(checkpoint), "use_gpu": use_gpu,
                                               "cpu_threads": cpu_threads or actor_cpus,
                                               "load": None if use_gpu else load})
    try:
        sink = EmbeddingSink(str(out), _next_run_prefix(out), faults.from_env(faults.EMBED_FAULT_ENV))
        ds.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=1)  # light writes
    except Exception as e:
        cause = storage.os_error_in(e)
        if cause is None:
            raise
        raise storage.one_line_os_error(cause, "finished shards are kept: fix that, then re-run to finish") from e


def _next_run_prefix(out: Path) -> str:
    """``rNNN``, one past every earlier run's shards (so no run ever writes a name another run wrote)."""
    runs = [int(p.name[1:4]) for p in shard_paths(out) if p.name[:1] == "r" and p.name[1:4].isdigit()]
    return f"r{max(runs, default=-1) + 1:03d}"


def _summarize(out: Path, ran: set[str], skipped: int, seconds: float) -> EmbedSummary:
    rows = read_rows(out, ["video_id", "status", "error", "n_clips"]).to_pylist()
    mine = [r for r in rows if r["video_id"] in ran]
    ok = [r for r in mine if r["status"] == "ok"]
    return EmbedSummary(videos_ok=len(ok), videos_failed=len(mine) - len(ok), videos_skipped=skipped,
                        clips=sum(r["n_clips"] for r in ok), seconds=seconds,
                        failures=[(r["video_id"], r["error"]) for r in mine if r["status"] != "ok"])
