"""Helpers of the reliability drills (test_fault_drills.py, test_storage_faults.py): tiny videos, store contents, a
small disk that fills up, and hooks that act at a known point of a running job."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from conftest import build_frame_store
from ray.train import UserCallback

from clipbert.data import frames as fs

STORE_OPTIONS = fs.StoreOptions(max_fps=4.0, max_side=64)


def write_videos(directory: Path, n: int, frames: int = 12, size: tuple[int, int] = (48, 64)) -> Path:
    """`n` tiny mp4 videos v0..v{n-1} (a square sliding over a gradient, 8 fps) in `directory`."""
    from clipbert.synthetic.encode import write_video

    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        rng = np.random.default_rng(i)
        clip = np.repeat(np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 40 * i % 256)], -1)[None], frames, 0)
        for t in range(frames):
            x = (3 * t + 5 * i) % (w - 12)
            clip[t, h // 3:h // 3 + 12, x:x + 12] = rng.integers(0, 255, 3)
        write_video(directory / f"v{i}.mp4", clip.astype(np.uint8), fps=8)
    return directory


def clean_store(videos: Path, out: Path) -> Path:
    """The frame store of `videos` written in this process without Ray, in one shard: what a clean run stores."""
    return build_frame_store(videos, out, STORE_OPTIONS)


def store_contents(root: Path) -> tuple[list[dict], dict[str, list[bytes]]]:
    """(manifest rows without the shard column, every stored JPEG by video): equal for equal stores."""
    manifest = fs.read_manifest(root).drop(["shard"]).to_pylist()
    reader = fs.FrameStore(root)
    return manifest, {v: reader.get_jpeg(v, range(reader.n_stored(v))) for v in reader.ids()}


def complete_shard_ids(root: Path) -> list[str]:
    """Video ids in the store's complete shards, one entry per row (a duplicate would show twice)."""
    return fs.read_shard_rows(root).column("video_id").to_pylist()


# ------------------------------------------------------------------------------------------------- a small disk
@contextlib.contextmanager
def small_disk(directory: Path, size: str = "10M") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `directory` for the block (the test is skipped where mounting is not allowed)."""
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs for the disk-full drill (needs root and mount permission): "
                    f"{done.stderr.strip() or done.returncode}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill_disk(disk: Path) -> Path:
    """Write a ballast file until `disk` has no space left; returns it (delete it to free the space)."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\xff" * (1 << 16))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    with contextlib.suppress(OSError):  # the last pages
        with open(ballast, "ab", buffering=0) as f:
            while True:
                f.write(b"\xff" * 4096)
    assert fs.free_bytes(disk) < 8192
    return ballast


# ------------------------------------------------------------------------------------- acting at a known point
class Trigger:
    """Runs `action(held)` in a thread once `marker` exists (`held` = its JSON), then creates `release`."""

    def __init__(self, marker: Path, action: Callable[[dict], Any], release: Path | None = None):
        self.marker, self.action, self.release = marker, action, release
        self.held: dict | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self.marker.exists():
                if self._stop.wait(0.02):
                    return
            self.held = json.loads(self.marker.read_text())
            self.action(self.held)
        except BaseException as e:  # re-raised by join()
            self.error = e
        finally:
            if self.release is not None:
                self.release.touch()

    def join(self, grace_s: float = 10.0) -> dict:
        """After the job: wait for the action (the marker must exist within `grace_s`); its error is raised here.
        Returns what the held task wrote."""
        deadline = time.monotonic() + grace_s
        while not self.marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.marker.exists():
            self._stop.set()
        self._thread.join(timeout=300)
        if self.error is not None:
            raise self.error
        assert self.held is not None, f"the fault never triggered: no {self.marker}"
        return self.held


class Background:
    """`fn()` in a thread (e.g. a training run, while the main thread adds a node: Ray starts nodes only from the
    main thread, as it installs signal handlers)."""

    def __init__(self, fn: Callable[[], Any]):
        self.value: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as e:  # re-raised by result()
            self.error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout_s: float = 900.0) -> Any:
        self._thread.join(timeout=timeout_s)
        assert not self._thread.is_alive(), f"still running after {timeout_s:.0f} s"
        if self.error is not None:
            raise self.error
        return self.value

    def wait_for(self, marker: Path) -> dict:
        """The JSON in `marker` once it exists; fails (with the job's error, if any) if the job ends first."""
        while not marker.exists():
            if self.done():
                self.result()
                raise AssertionError(f"the job ended without reaching {marker}")
            time.sleep(0.05)
        return json.loads(marker.read_text())


def fault_spec(directory: Path, **extra: Any) -> str:
    """A CLIPBERT_*_FAULT value holding the first matching task (clipbert/faults.py), marker in `directory`."""
    return json.dumps({"marker": str(directory / "held.json"), **extra})


class ReportGate(UserCallback):
    """Ray Train callback (it runs in the run's controller) that holds the controller at chosen checkpoint reports,
    so a test can remove a node or fill the disk while the run is known to be past a checkpoint.

    Hold i (1-based) happens at the first report carrying a checkpoint after hold i-1 that matches ``holds[i-1]``:
    "any", or "resumed" (a report of a worker group restarted from a checkpoint: ``resumed_from_step`` > 0). It
    writes ``{"step", "resumed_from_step", "checkpoint"}`` to `directory`/held{i}.json and waits for
    `directory`/go{i}. The workers go on meanwhile, so their next report may or may not be registered first.
    """

    def __init__(self, directory: Path, holds: tuple[str, ...] = ("any",)):
        self.directory, self.holds, self.done = str(directory), tuple(holds), 0

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is None or self.done >= len(self.holds):
            return
        if self.holds[self.done] == "resumed" and not metrics[0].get("resumed_from_step"):
            return
        self.done += 1
        marker, release = (os.path.join(self.directory, f"{n}{self.done}{e}") for n, e in (("held", ".json"),
                                                                                            ("go", "")))
        with open(f"{marker}.tmp", "w") as f:
            json.dump({"step": metrics[0]["step"], "resumed_from_step": metrics[0].get("resumed_from_step"),
                       "checkpoint": checkpoint.path}, f)
        os.replace(f"{marker}.tmp", marker)
        deadline = time.monotonic() + 180
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)


def pickle_by_value() -> None:
    """Ship this module's classes (ReportGate) to Ray processes by value: tests/ is not on their import path."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def snapshot(run_dir: Path) -> dict:
    """Ray Train's checkpoint snapshot of a run directory."""
    return json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
