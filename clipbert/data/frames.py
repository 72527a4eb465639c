"""Frame store format and reader: JPEG frames in LMDB shards plus a Parquet manifest, shared by pipelines/ and clipbert/.

Layout of a store directory::

    store.json                  header: format version and the preprocessing options
    manifest.parquet            one row per input video (MANIFEST_SCHEMA)
    shards/<name>/data.mdb      one LMDB environment per write task
    shards/<name>/rows.parquet  that shard's manifest rows, written after its LMDB commit (marks it complete)

Inside a shard, frame ``i`` of ``video_id`` is the JPEG (4:2:0, RGB) under ``frame_key(video_id, i)``.
Frames are decoded, resized (longer side <= ``max_side``, never upscaled) and subsampled to a stored frame rate
(``min(max_fps, source fps)``) once, so sparse training reads only the frames it needs.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import simplejpeg

from clipbert import storage

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
HEADER_FILE = "store.json"
MANIFEST_FILE = "manifest.parquet"
SHARDS_DIR = "shards"
PART_FILE = "rows.parquet"
MAX_KEY_BYTES = 500  # LMDB's key limit is 511 bytes; the frame suffix takes 7
MAP_SIZE = 1 << 40  # virtual: LMDB only reserves address space
MAX_MAP_SIZE = 1 << 44  # a shard whose map is full is grown by doubling up to this, then fails
LOW_SPACE_BYTES = 1 << 20  # an LMDB write error with less free space than this (plus the write) is a full disk
HEADER_KEYS = {"max_fps": "fps"}  # StoreOptions fields recorded in store.json under another key

MANIFEST_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),  # path relative to the input root, without extension
        ("source", pa.string()),  # input path or URI
        ("status", pa.string()),  # "ok" | "failed"
        ("error", pa.string()),  # failure reason; on ok rows a warning (e.g. truncated file) or ""
        ("num_frames", pa.int32()),  # stored frames (FrameStore.n_stored)
        ("fps", pa.float32()),  # stored frame rate, frames per second (FrameStore.stored_fps)
        ("src_fps", pa.float32()),  # source frame rate
        ("duration_s", pa.float32()),  # stored duration: num_frames / fps
        ("width", pa.int32()),  # stored frame width (pixels)
        ("height", pa.int32()),  # stored frame height (pixels)
        ("src_width", pa.int32()),  # source frame width (pixels)
        ("src_height", pa.int32()),  # source frame height (pixels)
        ("src_frames", pa.int32()),  # source frames decoded
        ("bytes", pa.int64()),  # JPEG bytes stored for this video
        ("shard", pa.string()),  # shard directory name under shards/
    ]
)


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """Preprocessing options recorded in the store header (``max_fps`` under the header key "fps")."""

    max_fps: float = 4.0  # stored frames per second, an upper bound: slower sources keep their own rate
    max_side: int = 448  # longer side of stored frames in pixels (never upscaled)
    jpeg_quality: int = 90  # libjpeg quality of stored frames, 4:2:0 chroma

    def __post_init__(self) -> None:
        if self.max_fps <= 0:
            raise ValueError(f"max_fps must be > 0, got {self.max_fps}")
        if self.max_side < 16:
            raise ValueError(f"max_side must be >= 16 pixels, got {self.max_side}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


def frame_key(video_id: str, index: int) -> bytes:
    """LMDB key of stored frame ``index`` of ``video_id``."""
    return f"{video_id}#{index:06d}".encode()


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """Encode one uint8 RGB frame (H, W, 3) as a 4:2:0 JPEG."""
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(frame), quality=quality, colorspace="RGB", colorsubsampling="420"
    )


def decode_jpeg(data: bytes, min_side: int = 0) -> np.ndarray:
    """Decode a JPEG to uint8 RGB (H, W, 3).

    Args:
        data: JPEG bytes.
        min_side: when > 0, libjpeg may decode at a reduced scale (1/2, 1/4, 1/8) as long as the longer
            side stays >= min_side; much cheaper when the model's input is smaller than the stored frame.
    """
    if min_side <= 0:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    h, w = simplejpeg.decode_jpeg_header(data)[:2]
    scale = min(1.0, min_side / max(h, w))
    return simplejpeg.decode_jpeg(
        data, colorspace="RGB", min_height=int(np.ceil(h * scale)), min_width=int(np.ceil(w * scale))
    )


def options_header(options: StoreOptions) -> dict:
    """The options as the store header records them: field names, but "fps" for ``max_fps``."""
    return {HEADER_KEYS.get(k, k): v for k, v in dataclasses.asdict(options).items()}


def write_header(root: str | Path, options: StoreOptions) -> None:
    """Write the store header (format version and options)."""
    header = {"format_version": FORMAT_VERSION, **options_header(options)}
    storage.write_bytes(str(Path(root) / HEADER_FILE), json.dumps(header, indent=2).encode())


def read_header(root: str | Path) -> dict:
    """Read the store header; raises FileNotFoundError naming the store when there is none."""
    path = Path(root) / HEADER_FILE
    if not path.exists():
        raise FileNotFoundError(f"not a frame store (no {HEADER_FILE}): {root}")
    header = json.loads(path.read_text())
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {header.get('format_version')}, expected {FORMAT_VERSION}")
    return header


class ShardWriter:
    """Writes one LMDB shard: frames of several videos, then its manifest rows (which mark it complete).

    A full LMDB map is grown (doubled, up to ``max_map_size``); a full disk raises OSError(ENOSPC) naming the
    shard. Either way a shard that fails is never marked complete, so a re-run deletes and redoes it.
    """

    def __init__(self, shard_dir: str | Path, map_size: int | None = None, max_map_size: int | None = None):
        self.dir = Path(shard_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        map_size = map_size or MAP_SIZE  # (module values read here, so that a test can shrink them)
        self.map_size, self.max_map_size = map_size, max(map_size, max_map_size or MAX_MAP_SIZE)
        # No fsync per video: a shard counts only once finish() has synced it and written its rows. No lock file:
        # one task writes a shard and readers come after its rows (lock=False), and a lock file that LMDB maps and
        # writes through memory would crash the process (SIGBUS) instead of raising when the disk is full.
        self._env = _lmdb_call(self.dir, 0, lambda: lmdb.open(
            str(self.dir), map_size=map_size, subdir=True, sync=False, metasync=False, lock=False))

    def put_video(self, video_id: str, jpegs: Sequence[bytes]) -> None:
        """Store all frames of one video in one transaction (growing a full map)."""
        size = sum(len(j) for j in jpegs)
        while True:
            try:
                return _lmdb_call(self.dir, size, lambda: self._put(video_id, jpegs))
            except lmdb.MapFullError:
                self._grow(size)

    def _put(self, video_id: str, jpegs: Sequence[bytes]) -> None:
        with self._env.begin(write=True) as txn:
            for i, data in enumerate(jpegs):
                txn.put(frame_key(video_id, i), data)

    def _grow(self, needed: int) -> None:
        if self.map_size * 2 > self.max_map_size:
            raise OSError(errno.ENOSPC, f"LMDB map of frame-store shard {self.dir} full at {self.map_size} bytes "
                          f"(limit {self.max_map_size}; a video needed {needed} more): store fewer videos per shard",
                          str(self.dir))
        self.map_size *= 2
        logger.info("LMDB map of shard %s full: grown to %d bytes", self.dir.name, self.map_size)
        self._env.set_mapsize(self.map_size)

    def finish(self, rows: pa.Table) -> None:
        """Flush the LMDB environment, then write the shard's manifest rows atomically."""
        _lmdb_call(self.dir, 0, lambda: self._env.sync(True))
        self._env.close()
        buf = pa.BufferOutputStream()
        pq.write_table(rows.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA), buf)
        storage.write_bytes(str(self.dir / PART_FILE), buf.getvalue().to_pybytes())

    def abort(self) -> None:
        """Close the environment without marking the shard complete (a re-run deletes it)."""
        self._env.close()


def ok_row(video_id: str, source: str, jpegs: Sequence[bytes], *, fps: float, width: int, height: int,
           src_fps: float, src_width: int, src_height: int, src_frames: int, warning: str = "") -> dict:
    """The manifest row (without its shard) of a video stored as `jpegs` at `fps`, `width` x `height`."""
    return dict(video_id=video_id, source=source, status="ok", error=warning, num_frames=len(jpegs), fps=fps,
                src_fps=src_fps, duration_s=len(jpegs) / fps, width=width, height=height, src_width=src_width,
                src_height=src_height, src_frames=src_frames, bytes=sum(len(j) for j in jpegs))


def failed_row(video_id: str, source: str, error: str) -> dict:
    """The manifest row (without its shard) of a video that was not stored, and why."""
    return dict(video_id=video_id, source=source, status="failed", error=error, num_frames=0, fps=0.0, src_fps=0.0,
                duration_s=0.0, width=0, height=0, src_width=0, src_height=0, src_frames=0, bytes=0)


def write_shard(root: str | Path, shard: str, videos: Iterable[tuple[dict, Sequence[bytes]]],
                before_put: Callable[[str], None] | None = None) -> int:
    """Store `videos`, (manifest row without its shard, JPEG frames) pairs, in the shard `shard` of the store at
    `root` (a failed row's frames are not stored), then the shard's rows, which mark it complete; returns how many
    rows. ``before_put(video_id)`` runs before each video is stored. On any error the shard is left unfinished
    (no rows), so a re-run deletes and redoes it."""
    writer = ShardWriter(Path(root) / SHARDS_DIR / shard)
    rows = []
    try:
        for row, jpegs in videos:
            if before_put is not None:
                before_put(row["video_id"])
            if row["status"] == "ok":
                writer.put_video(row["video_id"], jpegs)
            rows.append({**row, "shard": shard})
        writer.finish(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
    except BaseException:
        writer.abort()
        raise
    return len(rows)


def write_store(root: str | Path, options: StoreOptions, videos: Iterable[tuple[dict, Sequence[bytes]]],
                shard: str = "r000-00000") -> Path:
    """A complete frame store written in this process (no Ray): the header, one shard of `videos` ((manifest row,
    JPEG frames) pairs) and the manifest; the store a clean preprocessing run of the same rows writes."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_header(root, options)
    write_shard(root, shard, videos)
    write_manifest(root, read_shard_rows(root))
    return root


def _lmdb_call(shard_dir: Path, size: int, fn):
    """``fn()``; an LMDB error on a (nearly) full disk becomes OSError(ENOSPC) naming the shard: LMDB reports a
    short write as "Input/output error", which names neither the cause nor the place."""
    try:
        return fn()
    except lmdb.MapFullError:
        raise
    except (lmdb.Error, OSError) as e:
        free = free_bytes(shard_dir)
        if free is not None and free < size + LOW_SPACE_BYTES:
            raise OSError(errno.ENOSPC, f"No space left on device writing frame-store shard {shard_dir} ({free} "
                          f"bytes free; LMDB: {e})", str(shard_dir)) from e
        raise


def free_bytes(path: str | Path) -> int | None:
    """Bytes free to this user on the filesystem holding ``path`` (None if it cannot be told)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def shard_dirs(root: str | Path) -> list[Path]:
    """All shard directories of a store, complete or not, sorted by name."""
    shards = Path(root) / SHARDS_DIR
    return sorted(p for p in shards.iterdir() if p.is_dir()) if shards.exists() else []


def remove_incomplete_shards(root: str | Path) -> list[str]:
    """Delete shards whose manifest rows were never written (their write task died); return their names."""
    removed = []
    for shard in shard_dirs(root):
        if not (shard / PART_FILE).exists():
            shutil.rmtree(shard)
            removed.append(shard.name)
    return removed


def read_shard_rows(root: str | Path) -> pa.Table:
    """Manifest rows of every complete shard, sorted by video_id."""
    parts = [pq.read_table(s / PART_FILE) for s in shard_dirs(root) if (s / PART_FILE).exists()]
    table = pa.concat_tables(parts) if parts else MANIFEST_SCHEMA.empty_table()
    return table.sort_by("video_id")


def write_manifest(root: str | Path, rows: pa.Table) -> None:
    """Write manifest.parquet atomically (rows sorted by video_id)."""
    buf = pa.BufferOutputStream()
    pq.write_table(rows.cast(MANIFEST_SCHEMA).sort_by("video_id"), buf)
    storage.write_bytes(str(Path(root) / MANIFEST_FILE), buf.getvalue().to_pybytes())


def read_manifest(root: str | Path) -> pa.Table:
    """Read manifest.parquet; FileNotFoundError names the store when it is missing."""
    path = Path(root) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"frame store has no {MANIFEST_FILE} (unfinished preprocessing?): {root}")
    return pq.read_table(path)


class FrameStore:
    """Read-only access to a frame store; opened lazily in each process, safe to pickle into Ray tasks.

    Example::

        store = FrameStore("/data/msrvtt_frames")
        frames = store.get("video2960", [0, 3])  # uint8 (2, H, W, 3) RGB
    """

    def __init__(self, root: str | Path, max_open_shards: int = 64):
        self.root = Path(root)
        self.max_open_shards = max_open_shards
        self.header = read_header(self.root)
        self._index: dict[str, tuple[str, int, float]] | None = None

    def __getstate__(self) -> dict:
        return {"root": self.root, "max_open_shards": self.max_open_shards, "header": self.header}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._index = None

    @property
    def index(self) -> dict[str, tuple[str, int, float]]:
        """video_id -> (shard, n_stored, stored_fps) for every ok video."""
        if self._index is None:
            manifest = read_manifest(self.root)
            table = manifest.filter(pc.equal(manifest["status"], "ok"))
            cols = table.select(["video_id", "shard", "num_frames", "fps"]).to_pydict()
            self._index = {
                v: (s, int(n), float(f))
                for v, s, n, f in zip(cols["video_id"], cols["shard"], cols["num_frames"], cols["fps"])
            }
        return self._index

    def ids(self) -> list[str]:
        """Ids of every successfully stored video, sorted."""
        return sorted(self.index)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.index

    def _entry(self, video_id: str) -> tuple[str, int, float]:
        try:
            return self.index[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in frame store {self.root} (or failed preprocessing)") from None

    def n_stored(self, video_id: str) -> int:
        """Number of stored frames of a video."""
        return self._entry(video_id)[1]

    def stored_fps(self, video_id: str) -> float:
        """Stored frame rate of a video (frames per second)."""
        return self._entry(video_id)[2]

    def get_jpeg(self, video_id: str, indices: Sequence[int]) -> list[bytes]:
        """The stored JPEG bytes of frames ``indices`` of a video."""
        shard, n, _ = self._entry(video_id)
        bad = [int(i) for i in indices if not 0 <= int(i) < n]
        if bad:
            raise IndexError(f"video {video_id!r} has {n} frames; asked for {bad}")
        path = str(self.root / SHARDS_DIR / shard)
        with _SHARDS.lock:
            with _SHARDS.open(path, self.max_open_shards).begin(buffers=False) as txn:
                return [txn.get(frame_key(video_id, int(i))) for i in indices]

    def get(self, video_id: str, indices: Sequence[int], min_side: int = 0) -> np.ndarray:
        """Frames ``indices`` of a video as uint8 RGB ``(T, H, W, 3)``.

        Args:
            video_id: a stored video id.
            indices: stored-frame indices (repeats allowed).
            min_side: see ``decode_jpeg``; 0 decodes at the stored size.
        """
        return np.stack([decode_jpeg(b, min_side) for b in self.get_jpeg(video_id, indices)])



class _OpenShards:
    """Process-wide LRU of read-only LMDB environments (LMDB allows one handle per file per process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.envs: OrderedDict[str, lmdb.Environment] = OrderedDict()
        self.pid = os.getpid()

    def open(self, path: str, max_open: int) -> lmdb.Environment:
        """The environment at ``path`` (call with ``lock`` held)."""
        if self.pid != os.getpid():  # handles must not cross a fork
            self.envs, self.pid = OrderedDict(), os.getpid()
        env = self.envs.pop(path, None)
        if env is None:
            env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True, max_readers=512)
        self.envs[path] = env
        while len(self.envs) > max_open:
            self.envs.popitem(last=False)[1].close()
        return env


_SHARDS = _OpenShards()


