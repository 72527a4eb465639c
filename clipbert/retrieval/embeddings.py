"""The embeddings format (written by pipelines/embed.py, read by the index): Parquet shards of clip and video vectors.

Layout of an embeddings directory::

    embed.json                      checkpoint (path and hash), frame store, N clips, T frames, embedding dim
    shards/<run>-<task>.parquet     EMBED_SCHEMA rows, one per video; a shard is complete once it exists

Every vector is L2-normalised. ``open_gallery`` indexes the ok rows at one granularity (one vector per video,
or one per clip) sorted by (video_id, clip), and reads the vectors on demand.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

HEADER_FILE = "embed.json"
SHARDS_DIR = "shards"
GRANULARITIES = ("video", "clips")
VECTOR_COLUMNS = {"video": "video_embedding", "clips": "clip_embeddings"}
EMBED_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("status", pa.string()),  # "ok" | "failed"
    ("error", pa.string()),  # failure reason ("" when ok)
    ("n_clips", pa.int32()),  # N clips embedded
    ("clip_embeddings", pa.list_(pa.list_(pa.float32()))),  # (N, E) L2-normalised clip embeddings
    ("video_embedding", pa.list_(pa.float32())),  # (E,) their mean, L2-renormalised
])


def read_header(root: str | Path) -> dict[str, Any]:
    """embed.json of an embeddings directory: checkpoint (path, hash), frame store, N clips, T frames, dim."""
    path = Path(root) / HEADER_FILE
    if not path.exists():
        raise FileNotFoundError(f"not an embeddings directory (no {HEADER_FILE}): {root}")
    return json.loads(path.read_text())


def shard_paths(root: str | Path) -> list[Path]:
    """Finished embedding shards of a directory, sorted by name (none: an empty list)."""
    return sorted((Path(root) / SHARDS_DIR).glob("*.parquet"))


def read_rows(root: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Every row of every finished shard (EMBED_SCHEMA, or the `columns` asked)."""
    paths = shard_paths(root)
    if not paths:
        return EMBED_SCHEMA.empty_table().select(list(columns or EMBED_SCHEMA.names))
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in paths])


def check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    """ValueError unless value is one of allowed."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


@dataclasses.dataclass(frozen=True)
class Gallery:
    """The ok vectors of an embeddings directory at one granularity, sorted by (video_id, clip).

    ``table`` has columns video_id, clip (-1 at video granularity), shard (index into ``shards``) and row
    (row within that shard); table row i is index id i. Vectors are read from the shards on demand.
    """

    emb_dir: Path
    granularity: str
    shards: tuple[Path, ...]
    table: pa.Table

    @property
    def size(self) -> int:
        """Number of vectors (videos or clips)."""
        return self.table.num_rows

    @functools.cached_property
    def dim(self) -> int:
        """Embedding size E, read from the first vector."""
        return int(self.vectors(np.zeros(1, np.int64)).shape[1])

    @functools.cached_property
    def _locations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, row, clip) of every gallery row, each (size,)."""
        return tuple(self.table[c].to_numpy() for c in ("shard", "row", "clip"))

    def ids(self) -> pa.Table:
        """Row -> (video_id, clip), the content of ids.parquet."""
        return self.table.select(["video_id", "clip"])

    def shard_positions(self, shard: int) -> np.ndarray:
        """Gallery rows (index ids) stored in shard number `shard`, ascending; (n,) int64."""
        return np.flatnonzero(self._locations[0] == shard)

    def vectors(self, positions: np.ndarray | None = None) -> np.ndarray:
        """Vectors of gallery rows `positions` (all when None), in that order; float32 (len(positions), E)."""
        shard, row, clip = self._locations
        positions = np.arange(self.size) if positions is None else np.asarray(positions, np.int64)
        out: np.ndarray | None = None
        for s in np.unique(shard[positions]):
            sel = np.flatnonzero(shard[positions] == s)
            got = read_shard_vectors(self.shards[s], self.granularity, row[positions[sel]], clip[positions[sel]])
            if out is None:
                out = np.empty((len(positions), got.shape[1]), np.float32)
            out[sel] = got
        return out if out is not None else np.zeros((0, 0), np.float32)


def list_shards(emb_dir: str | Path) -> list[Path]:
    """The Parquet shards of an embeddings directory, sorted by name; FileNotFoundError naming it if none."""
    shards = shard_paths(emb_dir)
    if not shards:
        raise FileNotFoundError(f"no embedding shards (*.parquet) under {Path(emb_dir) / SHARDS_DIR}")
    return shards


def open_gallery(emb_dir: str | Path, granularity: str, video_ids: Sequence[str] | None = None) -> Gallery:
    """Index the ok rows of every shard (ids only; no vectors are read).

    Args:
        emb_dir: embeddings directory holding shards/*.parquet.
        granularity: "video" or "clips".
        video_ids: restrict the gallery to these videos; ids without an ok row are counted in a warning.
    Returns:
        The Gallery; ValueError naming `emb_dir` when no ok row is left.
    """
    check_choice("granularity", granularity, GRANULARITIES)
    shards = tuple(list_shards(emb_dir))
    videos = pa.concat_tables([_ok_rows(path, i) for i, path in enumerate(shards)])
    _check_unique(videos, emb_dir)
    if video_ids is not None:
        videos = _restrict(videos, video_ids, emb_dir)
    if videos.num_rows == 0:
        among = " among the requested video ids" if video_ids is not None else ""
        raise ValueError(f"no ok embeddings in {emb_dir}{among}")
    table = _expand(videos, granularity).sort_by([("video_id", "ascending"), ("clip", "ascending")])
    if table.num_rows == 0:
        raise ValueError(f"the ok videos of {emb_dir} have no clips")
    return Gallery(Path(emb_dir), granularity, shards, table)


def load_embeddings(emb_dir: str | Path, granularity: str,
                    video_ids: Sequence[str] | None = None) -> tuple[np.ndarray, pa.Table]:
    """All ok vectors of an embeddings directory and their ids.

    Returns:
        vectors float32 (M, E), M videos ("video") or clips ("clips"); ids pa.Table (video_id string,
        clip int32: -1 for videos, 0..n-1 for clips), rows sorted by (video_id, clip).
    """
    gallery = open_gallery(emb_dir, granularity, video_ids)
    return gallery.vectors(), gallery.ids()


def read_shard_vectors(path: str | Path, granularity: str, rows: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """Vectors of (row, clip) pairs of one shard.

    Args:
        path: a Parquet shard.
        granularity: "video" (reads video_embedding; clips ignored) or "clips" (reads clip_embeddings).
        rows, clips: (n,) row numbers within the shard and clip numbers within the row.
    Returns:
        float32 (n, E).
    """
    column = VECTOR_COLUMNS[granularity]
    lists = _read_columns(path, [column])[column].combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)  # (rows,)
    if granularity == "clips":
        per_row, lists = lengths, lists.flatten()  # one inner list per clip
    else:
        per_row = (lengths > 0).astype(np.int64)
    matrix = _list_matrix(lists, path)  # (vectors in shard, E)
    starts = np.concatenate([[0], np.cumsum(per_row)])  # (rows + 1,)
    rows, clip = np.asarray(rows, np.int64), np.maximum(np.asarray(clips, np.int64), 0)
    if np.any(clip >= per_row[rows]):
        raise ValueError(f"{path}: n_clips or status disagree with the stored {column}")
    return matrix[starts[rows] + clip]


def _read_columns(path: Path, columns: list[str]) -> pa.Table:
    """Columns of a Parquet file; ValueError naming the file when it cannot be read."""
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"cannot read embedding shard {path}: {error}") from error


def _list_matrix(lists: pa.Array, path: Path) -> np.ndarray:
    """The non-empty float lists of `lists` (all of one length E) as the rows of a float32 (R, E) matrix."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    sizes = np.unique(lengths[lengths > 0])
    if sizes.size == 0:
        return np.zeros((0, 0), np.float32)
    if sizes.size > 1:
        raise ValueError(f"{path}: embeddings of different sizes {sizes.tolist()}")
    flat = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(-1, int(sizes[0]))  # (R * E,) -> (R, E)


def _ok_rows(path: Path, shard: int) -> pa.Table:
    """video_id, n_clips, shard, row of the ok rows of one shard."""
    table = _read_columns(path, ["video_id", "status", "n_clips"])
    rows = np.flatnonzero(pc.fill_null(pc.equal(table["status"], "ok"), False).to_numpy())
    return pa.table({
        "video_id": table["video_id"].take(rows).combine_chunks().cast(pa.string()),
        "n_clips": table["n_clips"].take(rows).combine_chunks().cast(pa.int64()),
        "shard": pa.array(np.full(len(rows), shard, np.int32)),
        "row": pa.array(rows.astype(np.int64)),
    })


def _check_unique(videos: pa.Table, emb_dir: str | Path) -> None:
    """ValueError naming a video id that has more than one ok row."""
    counts = pc.value_counts(videos["video_id"])
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        raise ValueError(f"{emb_dir}: video {repeated[0]['values']} has {repeated[0]['counts']} ok rows")


def _restrict(videos: pa.Table, video_ids: Sequence[str], emb_dir: str | Path) -> pa.Table:
    """The rows of `videos` whose id is in `video_ids`; warns with the number of ids that have no ok row."""
    wanted = pa.array(sorted(set(video_ids)), pa.string())
    kept = videos.filter(pc.is_in(videos["video_id"], value_set=wanted))
    missing = len(wanted) - kept.num_rows
    if missing:
        logger.warning("%d of the %d requested video ids have no ok embedding in %s; indexing the other %d",
                       missing, len(wanted), emb_dir, kept.num_rows)
    return kept


def _expand(videos: pa.Table, granularity: str) -> pa.Table:
    """One row per vector: per video (clip -1) or per clip (clip 0..n_clips-1)."""
    counts = videos["n_clips"].to_numpy() if granularity == "clips" else np.ones(videos.num_rows, np.int64)
    owner = np.repeat(np.arange(videos.num_rows), counts)  # (vectors,) video row of each vector
    clips = concat_ranges(np.zeros(len(counts), np.int64), counts) if granularity == "clips" else -np.ones(len(owner))
    picked = videos.take(owner)
    return pa.table({"video_id": picked["video_id"], "clip": pa.array(clips.astype(np.int32)),
                     "shard": picked["shard"], "row": picked["row"]})


def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ranges [starts[i], starts[i] + counts[i]); int64 (counts.sum(),)."""
    counts = np.asarray(counts, np.int64)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)  # (total,) first output slot of each range
    return np.repeat(np.asarray(starts, np.int64), counts) + np.arange(int(counts.sum())) - offsets
