"""Starting or joining Ray, the same way for every job, benchmark and test."""

from __future__ import annotations

import os
from typing import Any

STATE_API_ENV = "RAY_API_SERVER_ADDRESS"


def state_api_env(dashboard_port: int) -> dict[str, str]:
    """The environment that pins the State API to the dashboard at `dashboard_port` on this machine.

    Ray Train's placement-group cleaner asks the State API whether a run's controller is alive. Left to find a
    cluster by itself it may reach another Ray on this machine (the latest one `ray start`ed), not find the
    controller there, and remove the run's placement group mid-run.
    """
    return {STATE_API_ENV: f"http://127.0.0.1:{dashboard_port}"}


def init_ray(address: str | None = None, num_cpus: int | None = None, *, log_to_driver: bool = True,
             dashboard_port: int | None = None, progress_bars: bool = True, **local_options: Any) -> bool:
    """Join the cluster at ``address`` (or RAY_ADDRESS, as under `ray job submit`); with neither, start a Ray of this
    process's own rather than join whichever cluster a `ray start` left on this machine.

    ``num_cpus``, ``dashboard_port`` (a dashboard on 127.0.0.1 at that port, with this process's State API pinned
    to it) and ``local_options`` (e.g. include_dashboard) apply only to a Ray started here; ``progress_bars=False``
    turns Ray Data's progress bars off. Returns whether it started one.
    """
    import ray

    address = address or (None if os.environ.get("RAY_ADDRESS") else "local")
    local: dict[str, Any] = {}
    if address == "local":
        local = {"num_cpus": num_cpus, **local_options}
        if dashboard_port is not None:
            os.environ.update(state_api_env(dashboard_port))
            local.update(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=dashboard_port)
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=log_to_driver, **local)
    if not progress_bars:
        ray.data.DataContext.get_current().enable_progress_bars = False
    return address == "local"
