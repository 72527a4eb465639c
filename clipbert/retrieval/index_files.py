"""The files of an index directory: ``index.faiss``, ``ids.parquet`` and ``index.json``.

Each file is written atomically (a temporary file renamed over the name), ``index.json`` last: its presence
marks a complete index. Reading names the file at fault when one is missing, unreadable or disagrees.
``index.json`` names the local files it was built from (embeddings, checkpoint, frame store) relative to the index
directory, so that a tree holding them moves as a whole; reading gives them back as paths (URIs stay as they are).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import faiss
import pyarrow as pa
import pyarrow.parquet as pq

INDEX_FILE, IDS_FILE, INFO_FILE = "index.faiss", "ids.parquet", "index.json"
PATH_FIELDS = (("embeddings",), ("provenance", "embeddings"), ("provenance", "checkpoint"),
               ("provenance", "frame_store"))  # the paths in index.json, stored relative to the index directory


def save_index(out_dir: str | Path, index: faiss.Index, ids: pa.Table, info: dict[str, Any]) -> None:
    """Write index.faiss (CPU form), ids.parquet and, last, index.json, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INFO_FILE).unlink(missing_ok=True)  # the directory reads as incomplete until the new one lands
    _atomic_write(out_dir / INDEX_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
    _atomic_write(out_dir / IDS_FILE, lambda tmp: pq.write_table(ids, tmp))
    on_disk = _map_paths(info, lambda path: _relative(path, out_dir.resolve()))
    _atomic_write(out_dir / INFO_FILE, lambda tmp: tmp.write_text(json.dumps(on_disk, indent=2)))


def read_index_dir(index_dir: str | Path) -> tuple[faiss.Index, pa.Table, dict[str, Any]]:
    """The index, ids table (video_id, clip) and index.json record of an index directory.

    FileNotFoundError when the directory or one of its files is missing; ValueError when a file is unreadable
    or ids.parquet and index.faiss disagree on the number of vectors.
    """
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise FileNotFoundError(f"index directory {index_dir} does not exist")
    for name in (INFO_FILE, IDS_FILE, INDEX_FILE):
        if not (index_dir / name).is_file():
            raise FileNotFoundError(f"{index_dir / name} is missing (an incomplete or foreign index directory)")
    info = _map_paths(_read_json(index_dir / INFO_FILE), lambda path: _absolute(path, index_dir.resolve()))
    ids = _read_ids(index_dir / IDS_FILE)
    index = _read_faiss(index_dir / INDEX_FILE)
    if ids.num_rows != index.ntotal:
        raise ValueError(f"{index_dir}: {IDS_FILE} has {ids.num_rows:,} rows but {INDEX_FILE} holds "
                         f"{index.ntotal:,} vectors")
    return index, ids, info


def _map_paths(info: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """A copy of an index.json record with `fn` applied to each of its PATH_FIELDS that is present."""
    out = {**info}
    if isinstance(info.get("provenance"), dict):
        out["provenance"] = dict(info["provenance"])
    for *parents, key in PATH_FIELDS:
        holder = out.get(parents[0], {}) if parents else out
        if isinstance(holder, dict) and isinstance(holder.get(key), str):
            holder[key] = fn(holder[key])
    return out


def _relative(path: str, base: Path) -> str:
    """`path` relative to the directory `base`; a URI as it is."""
    return path if "://" in path else os.path.relpath(os.path.abspath(path), base)


def _absolute(path: str, base: Path) -> str:
    """A path that index.json holds relative to the directory `base`, as a path; an absolute path or a URI as it is."""
    return path if "://" in path or os.path.isabs(path) else os.path.normpath(base / path)


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """write(tmp) then rename tmp over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_faiss(path: Path) -> faiss.Index:
    """faiss.read_index with an error naming the file."""
    try:
        return faiss.read_index(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "read error"
        raise ValueError(f"cannot read FAISS index {path} (corrupt or truncated?): {first_line}") from error


def _read_ids(path: Path) -> pa.Table:
    """ids.parquet with an error naming the file."""
    try:
        return pq.read_table(path, columns=["video_id", "clip"])
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def _read_json(path: Path) -> dict[str, Any]:
    """index.json with an error naming the file."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"cannot parse {path}: {error}") from error
