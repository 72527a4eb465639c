"""Hyperparameter sweeps on Ray Tune: every trial is one training run (clipbert.training.run) built from one Config.

``prepare_sweep`` checks everything on the driver before Ray does anything: the base config, the space
(clipbert.sweep.space), the metric (one the training loop reports for this task), the storage path, the annotations.
``plan_sweep`` sizes concurrent trials x workers x (CPU, GPU) against the cluster so that a trial never waits for
resources that cannot come (each trial plans its workers and data stage against its own share). ``run_sweep``
runs Ray Train V2 inside Tune (a Tune function per trial that builds and fits a TorchTrainer whose reports reach
Tune through ``TuneReportCallback``), stops weak trials with ASHA on the validation metric at each evaluation
(``time_attr="step"``), and resumes an interrupted sweep when re-run with the same storage path and name.

Layout of STORAGE/NAME/: Tune's own state and one folder per trial (its reported results), ``runs/<trial_id>/``
(each trial's Train run: checkpoints, best/, final_metrics.json with val and test), ``sweep.json`` (what the
sweep was started with) and the outputs written by clipbert.sweep.report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

from clipbert.config import DATA_PATH_KEYS, Config, config_from_tree, load_config_tree
from clipbert.training.evaluation import metric_names
from clipbert.sweep.report import TrialRecord, write_outputs
from clipbert.sweep.space import Dimension, load_space, schedule_corners, to_tune, trial_config
from clipbert.training.loop import LOOP_METRICS
from clipbert.training.run import (
    TaskData,
    check_answers,
    check_storage,
    fit_and_export,
    plan_resources,
    prepare_task,
    schedule,
)

logger = logging.getLogger(__name__)

TRIAL_CPU = 0.01  # what a trial's own Tune function holds (it only waits on its TorchTrainer); 0 is refused by Tune
SCHEDULERS = ("asha", "fifo")
SEARCHERS = ("random", "optuna")
RUNS_DIR = "runs"  # STORAGE/NAME/runs/<trial_id>: each trial's Train run
SPEC_NAME = "sweep.json"


@dataclasses.dataclass
class SweepSpec:
    """What `jobs/tune.py` was asked for."""

    config: str  # preset name or YAML path
    space: str  # space YAML path (clipbert.sweep.space)
    overrides: list[str] = dataclasses.field(default_factory=list)  # section.key=value, applied to every trial
    num_samples: int = 8  # draws of the space (each grid point is tried num_samples times)
    max_concurrent: int | None = None  # None = as many trials as fit the cluster
    scheduler: str = "asha"
    search: str = "random"
    metric: str | None = None  # None = the config's train.metric
    mode: str | None = None  # None = the config's train.metric_mode
    storage_path: str = "runs"
    name: str = "sweep"
    grace_period: int | None = None  # ASHA's first rung, in optimiser steps (None = the first evaluation)
    reduction_factor: int = 3  # ASHA keeps the best 1/reduction_factor of the trials at each rung
    seed: int = 0  # seed of the searcher's draws

    @property
    def path(self) -> Path:
        return Path(self.storage_path) / self.name


@dataclasses.dataclass
class PreparedSweep:
    """A sweep checked on the driver: the config tree each trial starts from, its space, task and schedule."""

    spec: SweepSpec
    tree: dict
    base: Config
    dims: list[Dimension]
    task: TaskData
    metric: str
    mode: str
    max_steps: int  # the longest trial's optimiser steps (ASHA's max_t)


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """How many trials run at once and what each one's training run plans against."""

    max_concurrent: int
    share: dict[str, float]  # each trial's part of the cluster
    cpus_per_worker: float
    data_cpus: float

    def describe(self, workers: int) -> str:
        gpus = f", {self.share['GPU']:g} GPUs" if self.share.get("GPU") else ""
        return (f"{self.max_concurrent} trial(s) at once, each {workers} worker(s) x {self.cpus_per_worker:.2f} CPU "
                f"+ data tasks of {self.data_cpus:g} CPU within {self.share['CPU']:.2f} CPUs{gpus}")


def prepare_sweep(spec: SweepSpec) -> PreparedSweep:
    """Check everything a sweep needs before it starts; ValueError / FileNotFoundError / PermissionError name
    the fault."""
    if spec.scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler must be one of {SCHEDULERS}, got {spec.scheduler!r}")
    if spec.search not in SEARCHERS:
        raise ValueError(f"--search must be one of {SEARCHERS}, got {spec.search!r}")
    if spec.num_samples < 1 or spec.reduction_factor < 2:
        raise ValueError("--num-samples must be >= 1 and --reduction-factor >= 2")
    overrides = list(spec.overrides)
    if spec.metric:
        overrides.append(f"train.metric={spec.metric}")  # each trial exports its checkpoint by the sweep's metric
    if spec.mode:
        overrides.append(f"train.metric_mode={spec.mode}")
    tree = load_config_tree(spec.config, overrides)
    base = config_from_tree(tree)
    dims = load_space(spec.space)
    if spec.search == "optuna" and any(d.kind == "grid" for d in dims):
        raise ValueError("--search optuna draws its own points: use choice instead of grid in the space")
    task = prepare_task(base)
    check_answers(base, task)
    known = metric_names(base, task.val, task.val_mc) | set(LOOP_METRICS)
    if base.train.metric not in known:
        raise ValueError(f"--metric {base.train.metric!r} is never reported by {base.data.task} training; "
                         f"it reports {', '.join(sorted(known))}")
    check_storage(str(spec.path))
    return PreparedSweep(spec, tree, base, dims, task, base.train.metric, base.train.metric_mode,
                         longest_schedule(tree, dims, len(task.train)))


def longest_schedule(tree: dict, dims: list[Dimension], num_rows: int) -> int:
    """The most optimiser steps any trial of the space can run (corners that cannot train are skipped)."""
    steps = []
    for corner in schedule_corners(tree, dims):
        try:
            cfg = config_from_tree(corner)
            steps.append(schedule(cfg, num_rows, cfg.train.num_workers)[1])
        except ValueError:
            continue
    if not steps:
        raise ValueError(f"no trial of the space can train on {num_rows} rows: every schedule leaves zero steps")
    return max(steps)


def trial_share(cluster: dict[str, float], concurrent: int) -> dict[str, float]:
    """One of ``concurrent`` equal parts of the cluster, less what the trial's own function holds."""
    share = {"CPU": cluster.get("CPU", 0.0) / concurrent - TRIAL_CPU}
    if cluster.get("GPU"):
        share["GPU"] = cluster["GPU"] / concurrent
    return share


def plan_sweep(cluster: dict[str, float], workers: int, use_gpu: bool, requested: int | None,
               num_trials: int) -> SweepPlan:
    """Concurrent trials that fit: ``requested`` if it fits (else ValueError with the numbers), otherwise the most
    trials whose workers each get a whole CPU (and GPU) beside their data stage, at least one, at most num_trials."""
    gpus = cluster.get("GPU", 0.0)

    def plan(concurrent: int) -> SweepPlan:
        if use_gpu and concurrent * workers > gpus:
            raise ValueError(f"{concurrent} concurrent trial(s) x {workers} worker(s) need {concurrent * workers} "
                             f"GPUs; the cluster has {gpus:g}")
        share = trial_share(cluster, concurrent)
        try:
            per_worker, data = plan_resources(share, workers, use_gpu)
        except ValueError as e:
            raise ValueError(f"{concurrent} concurrent trial(s) get {share['CPU']:.2f} of the cluster's "
                             f"{cluster.get('CPU', 0):g} CPUs each: {e}") from None
        return SweepPlan(concurrent, share, per_worker, data)

    if requested is not None:
        if requested < 1:
            raise ValueError(f"--max-concurrent must be >= 1, got {requested}")
        return plan(requested)
    best = plan(1)  # raises when not even one trial fits
    for concurrent in range(2, max(1, num_trials) + 1):
        try:
            candidate = plan(concurrent)
        except ValueError:
            break
        if candidate.cpus_per_worker < 1.0:
            break
        best = candidate
    return best


def count_trials(dims: list[Dimension], num_samples: int) -> int:
    """Trials Tune will create: every grid point num_samples times."""
    return num_samples * math.prod(len(d.args) for d in dims if d.kind == "grid")


def run_trial(params: dict[str, Any], *, tree: dict, task: TaskData, share: dict[str, float], runs_dir: str) -> None:
    """One trial (a Tune function): build its Config, then fit, export and test it as `jobs/train.py` does.

    Its Train run is RUNS_DIR/<trial_id> (stable across restarts, so a restored trial resumes from its last
    checkpoint); every evaluation reaches Tune through TuneReportCallback. A config that cannot train raises,
    and Tune records the trial as errored.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(tree, params)
    trial_task = task if data_sources(cfg) == data_sources(config_from_tree(tree)) else prepare_task(cfg)
    check_answers(cfg, trial_task)
    fit_and_export(cfg, trial_task, storage_path=runs_dir, name=tune.get_context().get_trial_id(), cluster=share,
                   callbacks=[TuneReportCallback()])


def data_sources(cfg: Config) -> dict[str, str]:
    """What a task's rows are read from: a trial whose space changes one of these re-reads its own task."""
    return {key: getattr(cfg.data, key) for key in ("task", *DATA_PATH_KEYS)}


def run_sweep(prepared: PreparedSweep, *, gpu_trials: bool = False) -> list[TrialRecord]:
    """Run (or resume) the sweep on the connected Ray cluster and write its outputs; returns the trials."""
    import ray
    from ray import tune

    spec = prepared.spec
    path = spec.path.resolve()
    n_trials = count_trials(prepared.dims, spec.num_samples)
    plan = plan_sweep(ray.cluster_resources(), prepared.base.train.num_workers, prepared.base.train.use_gpu,
                      spec.max_concurrent, n_trials)
    logger.info("sweep %s: %d trials; %s", path, n_trials, plan.describe(prepared.base.train.num_workers))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, tree=prepared.tree, task=prepared.task, share=plan.share,
                             runs_dir=str(path / RUNS_DIR)),
        {"CPU": TRIAL_CPU})
    started = {"spec": dataclasses.asdict(spec), "metric": prepared.metric, "mode": prepared.mode,
               "max_steps": prepared.max_steps, "trials": n_trials}
    if tune.Tuner.can_restore(str(path)):
        check_same_sweep(path / SPEC_NAME, started)
        logger.info("resuming the sweep in %s: finished trials are kept, interrupted ones resume", path)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        path.mkdir(parents=True, exist_ok=True)
        (path / SPEC_NAME).write_text(json.dumps(started, indent=2))
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune(prepared.dims),
            tune_config=tune.TuneConfig(
                metric=prepared.metric, mode=prepared.mode, num_samples=spec.num_samples,
                max_concurrent_trials=plan.max_concurrent, scheduler=make_scheduler(prepared),
                search_alg=make_searcher(spec, plan.max_concurrent), trial_dirname_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(name=spec.name, storage_path=str(path.parent), verbose=1),
        )
    grid = tuner.fit()
    records = [trial_record(result, path / RUNS_DIR, prepared.metric) for result in grid]
    write_outputs(path, records, metric=prepared.metric, mode=prepared.mode, max_steps=prepared.max_steps)
    return records


def check_same_sweep(spec_file: Path, started: dict) -> None:
    """A sweep resumes only with what it was started with; ValueError names what differs."""
    if not spec_file.is_file():
        return
    before = json.loads(spec_file.read_text())
    now = json.loads(json.dumps(started))
    keys = sorted(k for k in set(before["spec"]) | set(now["spec"])
                  if k != "max_concurrent" and before["spec"].get(k) != now["spec"].get(k))
    keys += [k for k in ("metric", "mode", "max_steps", "trials") if before.get(k) != now.get(k)]
    if keys:
        diffs = "; ".join(f"{k}: {before['spec'].get(k, before.get(k))!r} -> {now['spec'].get(k, now.get(k))!r}"
                          for k in keys)
        raise ValueError(f"{spec_file.parent} holds a sweep started differently ({diffs}); use another --name "
                         "or the same arguments")


def make_scheduler(prepared: PreparedSweep):
    """ASHA on the validation metric, counted in optimiser steps, or FIFO (every trial runs to its end)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if prepared.spec.scheduler == "fifo":
        return FIFOScheduler()
    grace = prepared.spec.grace_period or prepared.base.train.eval_every_steps
    # ASHA stops a trial whose step reaches max_t: one past the longest schedule, so that a trial's last
    # evaluation never stops it before it exports and tests its checkpoint
    return ASHAScheduler(time_attr="step", max_t=max(prepared.max_steps, grace) + 1, grace_period=grace,
                         reduction_factor=prepared.spec.reduction_factor)


def make_searcher(spec: SweepSpec, max_concurrent: int):
    """Seeded random draws (grid points enumerated), or Optuna's TPE (the optional `tune` extra). Tune ignores
    max_concurrent_trials for a variant generator passed in: it gets the limit itself."""
    from ray.tune.search import BasicVariantGenerator

    if spec.search == "random":
        return BasicVariantGenerator(random_state=spec.seed, max_concurrent=max_concurrent)
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as e:
        raise ValueError(f"--search optuna needs optuna: pip install 'clipbert-ray[tune]' ({e})") from None
    return OptunaSearch(seed=spec.seed)


def trial_record(result, runs_dir: Path, metric: str) -> TrialRecord:
    """A trial as the outputs need it, from Tune's result and its Train run's final_metrics.json."""
    trial_id = Path(result.path).name
    final_file = runs_dir / trial_id / "final_metrics.json"
    final = json.loads(final_file.read_text()) if final_file.is_file() else None
    frame = result.metrics_dataframe
    curve: list[tuple[int, float]] = []
    if frame is not None and metric in frame and "step" in frame:
        rows = frame[["step", metric]].dropna()
        curve = sorted({int(s): float(v) for s, v in zip(rows["step"], rows[metric])}.items())
    if result.error is not None:
        status = "errored"
    elif final is not None:
        status = "completed"
    else:
        status = "stopped_early" if curve else "not_run"
    error = str(result.error).strip().splitlines()[-1] if result.error is not None else ""
    return TrialRecord(trial_id=trial_id, params=dict(result.config or {}), status=status, curve=curve, final=final,
                       error=error, run_dir=str(runs_dir / trial_id))
