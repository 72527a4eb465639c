"""Shared helpers of the benchmark scripts: a corpus to measure on, a printed table, a JSON record."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any, Sequence

from clipbert.synthetic.corpus import synthesize_corpus


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d")}


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ray(num_cpus: int | None = None) -> int:
    """A fresh local Ray (never another cluster) with Ray Train's idle-worker limit raised as jobs/train.py does, its
    own dashboard, which Ray Train's State API calls are pinned to (not another Ray on the machine), and no Ray Data
    progress bars; returns the dashboard's port."""
    from clipbert.ray_init import init_ray
    from clipbert.training.run import keep_idle_workers

    keep_idle_workers()
    port = free_port()
    init_ray("local", num_cpus, log_to_driver=False, dashboard_port=port, progress_bars=False)
    return port


def corpus(workdir: Path, n_videos: int, seed: int) -> Path:
    """A synthetic corpus of ``n_videos`` H.264 videos under workdir (made once, then reused)."""
    root = workdir / f"corpus_{n_videos}_{seed}"
    if not (root / "corpus.json").exists():
        synthesize_corpus(root, n_videos=n_videos, seed=seed, workers=2)
    return root


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as an aligned text table."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_json(out_dir: str | Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the machine description) to OUT_DIR/NAME.json."""
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    print(f"\nwrote {path}")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
