"""Run storage that is a local directory or a URI (s3://, gs://, ...): what the driver and rank 0 write there.

Ray Train writes checkpoints through its own pyarrow filesystem; the files written beside them (``best/``,
``final_metrics.json``, TensorBoard events) go through ``pyarrow.fs`` here, so a URI is a bucket, never a local
directory named ``s3:``. Credentials and endpoints come from the usual environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...), read by pyarrow in each process.
"""

from __future__ import annotations

import os
import re
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
    """Write one file at a local path or URI, creating its directory (local files are replaced atomically: on a
    full disk the old file stays, no partial file is left, and the OSError names ``path``)."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise with_path(e, path) from e
        return
    fsys, inner = resolve(path)
    with fsys.open_output_stream(inner) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    fsys, inner = resolve(path)
    with fsys.open_input_stream(inner) as f:
        return f.read()


def replace_dir(local_dir: str | Path, dest: str, names: tuple[str, ...] | None = None) -> None:
    """Make ``dest`` hold the files ``names`` (default: every file) of ``local_dir``, and nothing else.

    A local ``dest`` is filled beside it and renamed into place: on a full disk the old ``dest`` (or none) stays,
    never a half-copied one, and the OSError names the file that could not be written.
    """
    if not is_uri(dest):
        _replace_local_dir(Path(local_dir), Path(dest), names)
        return
    fsys, inner = resolve(dest)
    if fsys.get_file_info(inner).type != pafs.FileType.NotFound:
        fsys.delete_dir(inner)
    upload_dir(local_dir, dest, names)


def _replace_local_dir(src: Path, dest: Path, names: tuple[str, ...] | None) -> None:
    staging = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        upload_dir(src, str(staging), names)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if not e.filename:
            raise
        raise with_path(e, str(dest / Path(e.filename).name)) from e  # the file it could not write, at its place
    old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)


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


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError (a full disk, a read-only or vanished path, ...) behind ``error``, searched through its causes,
    its context and the ``cause`` of Ray task errors, which wrap what a remote task raised; None if there is none.

    Returned as ``OSError(errno, "reason: path")`` on one line: the path is put into the message because the
    ``filename`` of an error from a Ray Data task does not survive (Ray Data appends its retry advice to the
    exception's arguments, which become the filename when the error is unpickled). The first error with a path
    wins, else the first with an errno (also when only the message holds it, as in pyarrow's). Ray's own
    wrappers, whose messages are whole tracebacks, are looked through, never returned.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    found: list[OSError] = []
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        wrapper = type(e).__module__.startswith("ray.") or getattr(e, "cause", None) is not None
        if isinstance(e, OSError) and not wrapper and _errno(e) is not None:
            found.append(e)
        todo += [getattr(e, "cause", None), getattr(e, "controller_failure", None), e.__cause__, e.__context__]
        todo += list((getattr(e, "worker_failures", None) or {}).values())  # Ray Train's WorkerGroupError
    named = [e for e in found if _is_path(e.filename)]
    return _flat((named or found)[0]) if found else None


def _is_path(name: object) -> bool:
    return isinstance(name, str) and "\n" not in name and (os.path.isabs(name) or is_uri(name))


def _flat(error: OSError) -> OSError:
    """``OSError(errno, "reason: path")``, one line."""
    reason = error.strerror if isinstance(error.errno, int) and error.strerror else str(error)
    reason = " ".join(str(reason).split())
    if _is_path(error.filename) and error.filename not in reason:
        reason = f"{reason}: {error.filename}"
    return OSError(_errno(error), reason)


def _errno(error: OSError) -> int | None:
    """The errno of an OSError, also when only its message holds it (pyarrow: "... [errno 28] No space left")."""
    if isinstance(error.errno, int):
        return error.errno
    match = re.search(r"\[errno (\d+)\]", str(error), re.IGNORECASE)
    return int(match.group(1)) if match else None


def with_path(error: OSError, path: str) -> OSError:
    """``error`` naming ``path`` (same errno, its reason on one line); as it is when it has no errno."""
    code = _errno(error)
    if code is None:
        return error
    return OSError(code, " ".join(str(error.strerror or error).split()), path)


def one_line_os_error(error: OSError, advice: str = "") -> OSError:
    """``error`` as one line naming its path (see ``os_error_in``), with ``advice`` appended."""
    flat = _flat(error)
    return OSError(flat.errno, f"{flat.strerror}{'; ' + advice if advice else ''}")
