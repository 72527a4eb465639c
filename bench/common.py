"""Shared helpers of the benchmark scripts: a corpus to measure on, a printed table, a JSON record."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Sequence

from clipbert.synthetic import synthesize_corpus


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import os

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d")}


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
