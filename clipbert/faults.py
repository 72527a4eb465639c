"""Fault injection for the reliability drills: hold one Ray task at a chosen video so a test can kill it, or kill
every process that decodes a chosen video (as a decoder crash or the out-of-memory killer would).

A drill sets an environment variable of the driver (``CLIPBERT_PREPROCESS_FAULT`` for pipelines/preprocess.py,
``CLIPBERT_EMBED_FAULT`` for pipelines/embed.py) to a JSON object::

    {"marker": "/tmp/drill/held.json",   # written once, atomically, by the task that holds
     "video_id": "v3",                   # optional: hold only at this video (default: the first one reached)
     "node_id": "ab12...",               # optional: hold only on this Ray node (default: any)
     "after": "/out/shards/*.parquet",   # optional: hold only once a file matches this glob (default: at once)
     "release": "/tmp/drill/go",         # optional: go on once this file exists (default: never)
     "hold_s": 120,                      # optional: the longest hold
     "die_at": "v5"}                     # optional: SIGKILL every process that starts decoding this video

The driver reads it (``from_env``) and passes it to its tasks. The first task that reaches a matching video
writes ``{"pid", "node_id", "video_id"}`` to ``marker`` and holds, so the test can SIGKILL that process, remove
its node, kill the driver, or fill the disk and release it. A task that is not released within ``hold_s`` exits
abruptly (``os._exit``). Once the marker exists no task holds again, so Ray's retry of a killed task and a re-run
go through; ``die_at`` needs no marker. Unset, nothing happens.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import signal
import time
from typing import Any

logger = logging.getLogger(__name__)

PREPROCESS_FAULT_ENV = "CLIPBERT_PREPROCESS_FAULT"
EMBED_FAULT_ENV = "CLIPBERT_EMBED_FAULT"
DEFAULT_HOLD_S = 120.0


def from_env(name: str) -> dict[str, Any] | None:
    """The fault spec in environment variable ``name`` (None when unset or empty)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    spec = json.loads(text)
    if not isinstance(spec, dict) or not ({"marker", "die_at"} & spec.keys()):
        raise ValueError(f"{name} must be a JSON object with a 'marker' path or a 'die_at' video, got {text!r}")
    return spec


def hold_once(spec: dict[str, Any] | None, video_id: str) -> None:
    """Hold this process at ``video_id`` if ``spec`` asks for it and no task has held yet (see the module doc)."""
    if not spec or "marker" not in spec or spec.get("video_id") not in (None, video_id):
        return
    node_id = _node_id()
    if spec.get("node_id") not in (None, node_id):
        return
    if spec.get("after") and not glob.glob(spec["after"]):
        return
    marker = str(spec["marker"])
    tmp = f"{marker}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "node_id": node_id, "video_id": video_id}, f)
    try:
        os.link(tmp, marker)  # atomic and exclusive: exactly one task ever holds
    except FileExistsError:
        return
    finally:
        os.unlink(tmp)
    hold_s = float(spec.get("hold_s", DEFAULT_HOLD_S))
    logger.error("fault injection: process %d holds at video %s (up to %.0f s)", os.getpid(), video_id, hold_s)
    deadline = time.monotonic() + hold_s
    while time.monotonic() < deadline:
        if spec.get("release") and os.path.exists(spec["release"]):
            return
        time.sleep(0.05)
    os._exit(1)


def die_at(spec: dict[str, Any] | None, video_id: str) -> None:
    """Kill this process with SIGKILL if ``spec`` names ``video_id`` as its ``die_at`` video."""
    if spec and spec.get("die_at") == video_id:
        logger.error("fault injection: process %d dies decoding video %s", os.getpid(), video_id)
        os.kill(os.getpid(), signal.SIGKILL)


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside Ray
        return None
