"""The inputs of a preprocessing run: listing videos from a directory, a glob, a list file or URIs, each with its
id (its path relative to the input root, without extension), and reading one from local disk or object storage.

An input that cannot become a manifest row as it is (a file name that is not UTF-8, an id that would leave the input
root) is listed with its reason, so that it gets a failed row instead of stopping the run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import os
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow.fs as pafs

from clipbert.data import frames as fs
from pipelines.decode import IMAGE_EXTENSIONS

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .gif .flv .wmv .mpg .mpeg .ts .3gp .ogv".split()
)


@dataclasses.dataclass(frozen=True)
class VideoInput:
    """One input video: its id (path relative to the input root, no extension) and where to read it.

    ``error`` is set for an input that gets a failed manifest row without being read (a file name that is not
    UTF-8, an id that would leave the input root); ``video_id`` and ``source`` are then printable UTF-8.
    """

    video_id: str
    source: str
    error: str = ""


@dataclasses.dataclass
class Listing:
    """What ``list_videos`` found."""

    inputs: list[VideoInput]
    ignored: list[str]  # files skipped because their extension is not a video's
    aliases: list[str] = dataclasses.field(default_factory=list)  # symlinks to files or directories listed already


def list_videos(spec: str | Sequence[str]) -> Listing:
    """Expand a directory, a glob, a list file (one path per line) or a list of paths into video inputs.

    ``video_id`` is the path relative to the input root (the directory, the glob's fixed prefix, or the
    common parent of listed paths) without extension. Files in a directory or glob whose extension is not
    a video's are ignored (and reported); listed paths are taken as given, so a missing one becomes a
    failed manifest row. Symbolic links in a local directory are followed, but every real file and directory
    is listed once (by its path outside links when it has one), so a link back up the tree is no loop. Two
    inputs with the same id raise ValueError naming both.
    """
    aliases: list[str] = []
    if isinstance(spec, str) and _is_dir(spec):
        root, paths = spec, _walk(spec, aliases)
    elif isinstance(spec, str) and glob.has_magic(spec):
        root = _glob_root(spec)
        paths = [p for p in _walk(root, aliases) if fnmatch.fnmatch(p, spec)]
    elif isinstance(spec, str):
        if not _exists(spec):
            raise FileNotFoundError(f"--videos: no such directory, glob match or list file: {spec}")
        text = Path(spec).read_text(encoding="utf-8", errors="surrogateescape")  # file names need not be UTF-8
        paths = [p for p in (line.strip() for line in text.splitlines()) if p and not p.startswith("#")]
        return Listing(_to_inputs(paths, _common_root(paths)), [])
    else:
        paths = list(spec)
        return Listing(_to_inputs(paths, _common_root(paths)), [])
    videos = [p for p in paths if os.path.splitext(p)[1].lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS]
    ignored = sorted(printable(p) for p in set(paths) - set(videos))
    return Listing(_to_inputs(videos, root), ignored, sorted(printable(p) for p in aliases))


def printable(path: str) -> str:
    """A path as valid UTF-8 text: bytes of a file name that are not UTF-8 are shown as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def input_problem(video_id: str, source: str) -> str:
    """Why an input cannot be stored under its id ("" when it can)."""
    if printable(source) != source:
        return "file name is not valid UTF-8 (shown with \\x escapes): rename the file to store it"
    parts = video_id.split("/")
    if video_id.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in video_id:
        return "video id is not a path inside the input root ('..', '.', empty or absolute parts)"
    if len(fs.frame_key(video_id, 0)) > fs.MAX_KEY_BYTES:
        return f"video id longer than {fs.MAX_KEY_BYTES} bytes"
    return ""


def _to_inputs(paths: Iterable[str], root: str) -> list[VideoInput]:
    by_id: dict[str, VideoInput] = {}
    for path in paths:
        rel = os.path.relpath(path, root) if root else os.path.basename(path)
        raw_id = os.path.splitext(rel)[0].replace(os.sep, "/")
        video_id = printable(raw_id)
        if video_id in by_id:
            raise ValueError(f"duplicate video_id {video_id!r}: {by_id[video_id].source} and {printable(path)}")
        problem = input_problem(raw_id, path)
        by_id[video_id] = VideoInput(video_id, printable(path), problem)
    return [by_id[v] for v in sorted(by_id)]


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _is_dir(path: str) -> bool:
    if glob.has_magic(path):
        return False
    fsys, p = _filesystem(path)
    return fsys.get_file_info(p).type == pafs.FileType.Directory


def _exists(path: str) -> bool:
    fsys, p = _filesystem(path)
    return fsys.get_file_info(p).type != pafs.FileType.NotFound


def _walk(root: str, aliases: list[str]) -> list[str]:
    """Every file under ``root``, sorted; symlinks that repeat a listed file or directory go to ``aliases``."""
    if "://" not in root:
        return _walk_local(root, aliases)
    fsys, base = _filesystem(root)
    infos = fsys.get_file_info(pafs.FileSelector(base, recursive=True))
    prefix = root.rstrip("/")
    return sorted(prefix + i.path[len(base.rstrip("/")):] for i in infos if i.type == pafs.FileType.File)


def _walk_local(root: str, aliases: list[str]) -> list[str]:
    """Files under a local directory, each real file once: first the tree itself, then the directories its symlinks
    add (each real directory once, so a link back up the tree adds nothing), then its file symlinks. A path that
    repeats a listed file or directory goes to ``aliases``; broken links are kept (they fail as 'file not found')."""
    seen_dirs: set[tuple[int, int] | None] = set()
    found, file_links, dir_links = [], [], [os.path.abspath(root)]
    while dir_links:
        top = dir_links.pop(0)
        if _file_id(top) in seen_dirs:
            aliases.append(top)
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            seen_dirs.add(_file_id(dirpath))
            linked = {d for d in dirnames if os.path.islink(os.path.join(dirpath, d))}
            dir_links += [os.path.join(dirpath, d) for d in sorted(linked)]
            dirnames[:] = [d for d in dirnames if d not in linked]
            for path in (os.path.join(dirpath, n) for n in sorted(filenames)):
                (file_links if os.path.islink(path) else found).append(path)
    files, seen_files = [], set()
    for path in found + file_links:
        key = _file_id(path)
        if key is not None and key in seen_files:
            aliases.append(path)
            continue
        seen_files.add(key)
        files.append(path)
    return sorted(files)


def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` points to; None for a broken link."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _glob_root(pattern: str) -> str:
    parts = pattern.split("/")
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    root = "/".join(fixed) or "."
    return root if "://" in root else os.path.abspath(root)


def _common_root(paths: Sequence[str]) -> str:
    local = [os.path.abspath(p) for p in paths if "://" not in p]
    if not local or len(local) != len(paths):
        return ""
    return os.path.commonpath([os.path.dirname(p) for p in local])
