"""Ray Data preprocessing pipeline: list videos -> decode/subsample/resize/JPEG -> LMDB frame-store shards + manifest.

Stages (each a small callable): ``list_videos`` (driver; pipelines/inputs.py) -> ``decode_batch`` (one Ray task per block of videos,
fused with the write) -> ``FrameStoreSink`` (one LMDB shard per write task; ``on_write_complete`` writes the manifest).
Resume: shards whose rows were written survive a crash; a re-run deletes unfinished shards, skips every video
that already has a manifest row and processes the rest, leaving the manifest a single clean run would have written.
A task whose worker process or node dies is retried by Ray Data and rewrites the same shard; a video that kills
its decoding process every time (a decoder crash, the out-of-memory killer) gets a failed row after
``MAX_DECODER_DEATHS`` deaths instead of being retried forever (``DecodeJournal``). A full disk stops the run with
OSError(ENOSPC) naming the path; the shard being written is left unfinished, so a re-run redoes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data import Datasink

from clipbert import faults, storage
from clipbert.data import frames as fs
from clipbert.data.frames import MANIFEST_SCHEMA, StoreOptions
from pipelines.decode import DecodeError, decode_video
from pipelines.inputs import input_problem, list_videos

logger = logging.getLogger(__name__)

DECODING_DIR = "decoding"  # under the store: the decode journal, one file per video being decoded
MAX_DECODER_DEATHS = 2  # processes a video may kill while being decoded before it is recorded as failed


@dataclasses.dataclass
class Summary:
    """End-of-run figures of a preprocessing job."""

    videos_ok: int
    videos_failed: int
    videos_skipped: int  # already in the store from an earlier run
    store_ok: int  # videos stored in the whole store, this run and earlier ones
    frames: int  # frames stored by this run
    src_frames: int  # source frames decoded by this run
    bytes: int  # JPEG bytes stored by this run
    seconds: float
    failures: list[tuple[str, str]]  # (video_id, reason) of this run's failures

    def lines(self) -> list[str]:
        per_s = self.frames / self.seconds if self.seconds else 0.0
        out = [
            f"videos: {self.videos_ok} ok, {self.videos_failed} failed, {self.videos_skipped} already done",
            f"frames stored: {self.frames} ({self.bytes / 1e6:.1f} MB) from {self.src_frames} decoded "
            f"in {self.seconds:.1f} s: {per_s:.0f} stored frames/s, {self.src_frames / max(self.seconds, 1e-9):.0f} "
            "decoded frames/s",
        ]
        out += [f"failed: {vid}: {reason}" for vid, reason in self.failures[:20]]
        if len(self.failures) > 20:
            out.append(f"... and {len(self.failures) - 20} more failures (see manifest.parquet)")
        return out


def read_source(source: str) -> str | bytes:
    """A local path as is; a remote URI (s3://, gs://, ...) read into memory through pyarrow.fs."""
    if "://" not in source:
        return source
    fsys, path = pafs.FileSystem.from_uri(source)
    try:
        with fsys.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise DecodeError("file not found") from None


class DecodeJournal:
    """Which videos were being decoded when their process died, so that a video that kills its decoder is not
    retried forever (Ray Data retries a task whose worker process dies, without limit).

    ``begin`` writes ``<store>/decoding/<sha1 of the video id>`` holding the number of decodes of that video begun
    in this run, ``end`` removes it: a file left behind by a process that died counts one death. The store is a
    POSIX path shared by the nodes, as the shards are, so a retry on another node sees the deaths.
    """

    def __init__(self, store: str):
        self.dir = Path(store) / DECODING_DIR

    def begin(self, video_id: str) -> int:
        """Record one more decode of ``video_id``; return the number of processes that died decoding it before."""
        path = self._path(video_id)
        deaths = int(path.read_text()) if path.exists() else 0
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(str(deaths + 1))
        os.replace(tmp, path)
        return deaths

    def end(self, video_id: str) -> None:
        self._path(video_id).unlink(missing_ok=True)

    def clear(self) -> None:
        """Forget every death (at the start of a run: a driver killed mid-run is no decoder's fault)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def _path(self, video_id: str) -> Path:
        return self.dir / hashlib.sha1(video_id.encode("utf-8", "surrogateescape")).hexdigest()


def decode_batch(batch: dict[str, np.ndarray], *, options: dict, store: str | None = None,
                 fault: dict | None = None) -> dict[str, list]:
    """Ray Data map stage: decode each video of the batch into one row with its JPEG frames (or its failure).

    ``store``: the frame store being written, whose ``DecodeJournal`` counts decoder deaths (None: not counted).
    ``fault``: a drill's fault spec (clipbert/faults.py): the process decoding its ``die_at`` video is killed.
    """
    opts = StoreOptions(**options)
    journal = DecodeJournal(store) if store else None
    rows: dict[str, list] = {name: [] for name in MANIFEST_SCHEMA.names if name != "shard"}
    rows["jpegs"] = []
    errors = batch.get("error", [""] * len(batch["video_id"]))
    for video_id, source, error in zip(batch["video_id"], batch["source"], errors):
        row = _decode_row(str(video_id), str(source), opts, str(error), journal, fault)
        for name, value in row.items():
            rows[name].append(value)
    return rows


def _decode_row(video_id: str, source: str, opts: StoreOptions, error: str = "",
                journal: DecodeJournal | None = None, fault: dict | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {**fs.failed_row(video_id, source, error or input_problem(video_id, source)), "jpegs": []}
    if row["error"]:
        return row
    deaths = journal.begin(video_id) if journal else 0
    if deaths >= MAX_DECODER_DEATHS:
        row["error"] = (f"the decoding process died {deaths} times on this video (a decoder crash or out of "
                        "memory): not tried again")
    else:
        faults.die_at(fault, video_id)
        row.update(_decode_fields(video_id, source, opts))
    if journal:
        journal.end(video_id)
    return row


def _decode_fields(video_id: str, source: str, opts: StoreOptions) -> dict[str, Any]:
    """The manifest fields of one decoded video (status ok), with its JPEG frames, or its failure reason."""
    try:
        video = decode_video(read_source(source), opts)
    except DecodeError as e:
        return {"error": str(e)}
    except Exception as e:  # a decoder bug must not take the whole shard down
        logger.exception("unexpected error decoding %s", source)
        return {"error": f"unexpected {type(e).__name__}: {e}"}
    row = fs.ok_row(video_id, source, video.jpegs, fps=video.stored_fps, width=video.width, height=video.height,
                    src_fps=video.src_fps, src_width=video.src_width, src_height=video.src_height,
                    src_frames=video.src_frames, warning=video.warning)
    return {**row, "jpegs": video.jpegs}


class FrameStoreSink(Datasink):
    """Ray Data Datasink: each write task stores its videos in its own LMDB shard, then writes the shard's rows.

    ``fault``: a drill's fault spec (clipbert/faults.py), set from CLIPBERT_PREPROCESS_FAULT by the driver: the
    write task holds before storing that video, its shard unfinished.
    """

    def __init__(self, root: str, run_prefix: str, fault: dict | None = None):
        self.root = root
        self.run_prefix = run_prefix
        self.fault = fault

    def write(self, blocks: Iterable[pa.Table], ctx: Any) -> dict:
        shard = f"{self.run_prefix}-{ctx.task_idx:05d}"
        videos = ((row, row.pop("jpegs")) for block in blocks for row in block.to_pylist())
        count = fs.write_shard(self.root, shard, videos, lambda video_id: faults.hold_once(self.fault, video_id))
        return {"shard": shard, "videos": count}

    def on_write_complete(self, write_result: Any) -> None:
        fs.write_manifest(self.root, fs.read_shard_rows(self.root))

    def get_name(self) -> str:
        return "FrameStore"


def _next_run_prefix(root: str) -> str:
    """``rNNN``, one past every run that left a shard, finished or not (so a re-run never reuses the shard names of
    an interrupted run, whose stray tasks might still be finishing)."""
    runs = [int(s.name[1:4]) for s in fs.shard_dirs(root) if s.name[:1] == "r" and s.name[1:4].isdigit()]
    return f"r{max(runs, default=-1) + 1:03d}"


def _check_options(root: str, options: StoreOptions) -> None:
    if not (Path(root) / fs.HEADER_FILE).exists():
        return
    header = fs.read_header(root)
    wanted = fs.options_header(options)
    diffs = [f"{k}: store has {header.get(k)}, asked {v}" for k, v in wanted.items() if header.get(k) != v]
    if diffs:
        raise ValueError(f"{root} was made with other options ({'; '.join(diffs)}): "
                         "use a new --output or the same options to resume")


def run_preprocess(
    videos: str | Sequence[str],
    output: str,
    options: StoreOptions = StoreOptions(),
    *,
    videos_per_shard: int = 16,
    concurrency: int | None = None,
) -> Summary:
    """Preprocess ``videos`` into the frame store at ``output`` on the current Ray cluster; resumable.

    Args:
        videos: a directory, a glob, a list file or a list of paths (see ``list_videos``).
        output: the frame-store directory (created if missing).
        options: stored frame rate bound, max side, JPEG quality; must match the store's header when resuming.
        videos_per_shard: upper bound of videos per write task (= per LMDB shard).
        concurrency: maximum concurrent decode/write tasks (default: Ray decides from the free CPUs).
    """
    start = time.perf_counter()
    _check_options(output, options)
    listing = list_videos(videos)
    if listing.ignored:
        logger.info("ignored %d non-video files, e.g. %s", len(listing.ignored), listing.ignored[:3])
    if listing.aliases:
        logger.info("%d symlinks lead to files or directories listed already, e.g. %s", len(listing.aliases),
                    listing.aliases[:3])
    if not listing.inputs:
        raise ValueError(f"no videos found in {videos}")
    os.makedirs(output, exist_ok=True)
    fs.write_header(output, options)
    run_prefix = _next_run_prefix(output)  # before unfinished shards are deleted: their names are not reused
    removed = fs.remove_incomplete_shards(output)
    DecodeJournal(output).clear()
    if removed:
        logger.info("removed %d unfinished shards of an interrupted run: %s", len(removed), removed[:5])
    done = set(fs.read_shard_rows(output).column("video_id").to_pylist())
    todo = [v for v in listing.inputs if v.video_id not in done]
    logger.info("%d videos listed, %d already stored, %d to do", len(listing.inputs), len(listing.inputs) - len(todo), len(todo))
    if todo:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        n_blocks = min(len(todo), max(math.ceil(len(todo) / videos_per_shard), 4 * cpus))
        ds = ray.data.from_items([dataclasses.asdict(v) for v in todo], override_num_blocks=n_blocks)
        fault = faults.from_env(faults.PREPROCESS_FAULT_ENV)
        fn_kwargs = {"options": dataclasses.asdict(options), "store": os.path.abspath(output), "fault": fault}
        ds = ds.map_batches(decode_batch, batch_size=1, fn_kwargs=fn_kwargs)
        # One fused decode->write operator: Ray Data's per-operator reservation would hold half the CPUs idle.
        ds.context.op_resource_reservation_enabled = False
        try:
            sink = FrameStoreSink(output, run_prefix, fault)
            ds.write_datasink(sink, concurrency=concurrency)
            DecodeJournal(output).clear()
        except Exception as e:
            cause = storage.os_error_in(e)
            if cause is None:
                raise
            raise storage.one_line_os_error(cause, "shards finished before it are kept: fix that, then re-run the "
                                            "same command to finish") from e
    else:
        fs.write_manifest(output, fs.read_shard_rows(output))
    return _summarize(output, {v.video_id for v in todo}, len(listing.inputs) - len(todo), time.perf_counter() - start)


def _summarize(output: str, ran: set[str], skipped: int, seconds: float) -> Summary:
    manifest = fs.read_manifest(output).to_pylist()
    mine = [r for r in manifest if r["video_id"] in ran]
    ok = [r for r in mine if r["status"] == "ok"]
    return Summary(
        videos_ok=len(ok), videos_failed=len(mine) - len(ok), videos_skipped=skipped,
        store_ok=sum(r["status"] == "ok" for r in manifest),
        frames=sum(r["num_frames"] for r in ok), src_frames=sum(r["src_frames"] for r in ok),
        bytes=sum(r["bytes"] for r in ok), seconds=seconds,
        failures=[(r["video_id"], r["error"]) for r in mine if r["status"] != "ok"],
    )
