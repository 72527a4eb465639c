"""Starting or joining Ray, the same way for every job."""

from __future__ import annotations

import os
from typing import Any


def init_ray(address: str | None, num_cpus: int | None = None, *, log_to_driver: bool = True,
             **local_options: Any) -> bool:
    """Join the cluster at ``address`` (or RAY_ADDRESS, as under `ray job submit`); with neither, start a Ray of this
    process's own rather than join whichever cluster a `ray start` left on this machine. ``num_cpus`` and
    ``local_options`` (e.g. include_dashboard) apply only to a Ray started here. Returns whether it started one."""
    import ray

    address = address or (None if os.environ.get("RAY_ADDRESS") else "local")
    local = {"num_cpus": num_cpus, **local_options} if address == "local" else {}
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=log_to_driver, **local)
    return address == "local"
