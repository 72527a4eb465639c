"""Test data of the index tests: synthetic clip embeddings of videos, written as an embeddings directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipbert.retrieval import embeddings as ve
from clipbert.retrieval.embeddings import EMBED_SCHEMA as EMB_SCHEMA
from clipbert.retrieval.index import VideoIndex

DIM = 16


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; float32, same shape."""
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_videos(n_videos: int, seed: int, dim: int = DIM) -> dict[str, np.ndarray]:
    """video id -> its clip embeddings (2..4 clips, E=dim), each video's clips around its own direction."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.standard_normal((n_videos, dim)))  # (V, E)
    return {f"vid{v:04d}": normalise(centres[v] + 0.4 * rng.standard_normal((int(rng.integers(2, 5)), dim)))
            for v in range(n_videos)}


def write_emb(root: Path, videos: dict[str, np.ndarray], failed: tuple[str, ...] = (), shards: int = 2) -> Path:
    """An embeddings directory in the embed job's schema: videos spread over `shards` shards, plus failed rows."""
    rows = [{"video_id": vid, "status": "ok", "error": "", "n_clips": len(clips),
             "clip_embeddings": clips.tolist(), "video_embedding": normalise(clips.mean(0)).tolist()}
            for vid, clips in videos.items()]
    rows += [{"video_id": vid, "status": "failed", "error": "decode error", "n_clips": 0,
              "clip_embeddings": [], "video_embedding": []} for vid in failed]
    order = np.random.default_rng(0).permutation(len(rows))  # shards in no particular id order
    (root / ve.SHARDS_DIR).mkdir(parents=True)
    for s in range(shards):
        part = [rows[i] for i in order[s::shards]]
        pq.write_table(pa.Table.from_pylist(part, schema=EMB_SCHEMA), root / ve.SHARDS_DIR / f"part-{s:03d}.parquet")
    return root


def standard_videos() -> dict[str, np.ndarray]:
    """The videos of the shared test gallery: 40 of synthetic_videos, seed 1."""
    return synthetic_videos(40, seed=1)


def standard_emb(root: Path) -> Path:
    """The shared test gallery at `root`: the 40 standard_videos and one failed row ("broken") in 3 shards."""
    return write_emb(root, standard_videos(), failed=("broken",), shards=3)


def build_video_index(emb: Path, out: Path) -> Path:
    """A video-granularity index directory over `emb` at `out`, with a small provenance record; returns out."""
    VideoIndex.build(emb, out, granularity="video", memory_budget="1G", provenance={"checkpoint": "ck", "N": 4})
    return out
