"""Run storage that is a local directory or a URI (s3://, gs://, ...): what the driver and rank 0 write there.

Ray Train writes checkpoints through its own pyarrow filesystem; the files written beside them (``best/``,
``final_metrics.json``, TensorBoard events) go through ``pyarrow.fs`` here, so a URI is a bucket, never a local
directory named ``s3:``. Credentials and endpoints come from the usual environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...), read by pyarrow in each process.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI."""
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a local path or a URI."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def check_writable(path: str) -> None:
    """Create ``path`` (a directory or URI prefix) and write and delete a probe file there; raises OSError."""
    fsys, inner = resolve(path)
    fsys.create_dir(inner, recursive=True)
    probe = f"{inner.rstrip('/')}/.write_test_{uuid.uuid4().hex}"
    with fsys.open_output_stream(probe) as f:
        f.write(b"")
    fsys.delete_file(probe)


def write_bytes(path: str, data: bytes) -> None:
    """Write one file at a local path or URI, creating its directory (local files are replaced atomically)."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fsys, inner = resolve(path)
    with fsys.open_output_stream(inner) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    fsys, inner = resolve(path)
    with fsys.open_input_stream(inner) as f:
        return f.read()


def replace_dir(local_dir: str | Path, dest: str, names: tuple[str, ...] | None = None) -> None:
    """Make ``dest`` hold the files ``names`` (default: every file) of ``local_dir``, and nothing else."""
    fsys, inner = resolve(dest)
    if fsys.get_file_info(inner).type != pafs.FileType.NotFound:
        fsys.delete_dir(inner)
    upload_dir(local_dir, dest, names)


def upload_dir(local_dir: str | Path, dest: str, names: tuple[str, ...] | None = None) -> None:
    """Copy the files ``names`` (default: every file, recursively) of ``local_dir`` to ``dest``, over same names."""
    fsys, inner = resolve(dest)
    fsys.create_dir(inner, recursive=True)
    src = Path(local_dir)
    files = [src / n for n in names] if names else [p for p in src.rglob("*") if p.is_file()]
    for path in files:
        target = f"{inner.rstrip('/')}/{path.relative_to(src).as_posix()}"
        if not is_uri(dest):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            continue
        fsys.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with open(path, "rb") as f, fsys.open_output_stream(target) as out:
            shutil.copyfileobj(f, out)
