"""Ray Train finetuning, driver side: one training run built from one Config (also one trial of a sweep).

``prepare_task`` reads the annotations against the frame store, ``plan_resources`` sizes the workers and the data
stage against the cluster (or a sweep trial's share of it), ``build_trainer`` wires a Ray Data dataset of annotation
rows -> ``batches.make_batch`` (fresh sparse clips every epoch) into a ``TorchTrainer`` running
``loop.train_loop_per_worker``, and ``fit_and_export`` fits it, exports the checkpoint chosen on validation
and evaluates it once on the held-out test split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Sequence

import numpy as np
import torch

from clipbert import storage
from clipbert.data.batches import make_batch
from clipbert.model.checkpoint import CONFIG_NAME, RERANK_NAME, WEIGHTS_NAME, load_checkpoint
from clipbert.config import Config, config_to_dict
from clipbert.data.annotations import LoadReport, Row, build_ans2label, load_annotations, load_ans2label
from clipbert.training.evaluation import evaluate
from clipbert.training.preflight import check_inputs, one_line
from clipbert.training.pretraining import make_pretrain_batch
from clipbert.training.loop import train_loop_per_worker

logger = logging.getLogger(__name__)

FAULT_ENV = "CLIPBERT_FAULT_AT_STEP"  # fault injection for tests: the last rank exits once at this optimiser step
MIN_CPUS_PER_WORKER = 0.25  # below this a CPU training worker makes no useful progress
IDLE_WORKERS_ENV = "RAY_num_workers_soft_limit"  # Ray's limit of worker processes kept alive (see keep_idle_workers)
BATCHES_PER_BLOCK = 8  # annotation rows per Ray Data block = batch_size x this (see build_trainer)
MAX_BLOCKS = 200  # Ray Data's default parallelism


@dataclasses.dataclass
class TaskData:
    """Annotation rows of one finetuning run, checked against the frame store."""

    train: list[Row]
    val: list[Row]
    val_mc: list[Row]  # optional multiple-choice rows scored with the retrieval head
    test: list[Row]  # held-out rows, read once at the end of a run (empty when data.test_file is not set)
    num_answers: int  # QA label count (0 for other tasks)
    reports: list[LoadReport] = dataclasses.field(default_factory=list)  # what each annotation file kept/skipped
    test_mc: list[Row] = dataclasses.field(default_factory=list)  # held-out multiple-choice rows (data.test_mc_file)


# ------------------------------------------------------------------------------------------------ driver
def prepare_task(cfg: Config) -> TaskData:
    """Check every input path (clipbert.training.preflight), then read train/val annotations, keeping rows whose video is in
    the frame store (others are reported).

    Raises:
        FileNotFoundError / PermissionError: an input path is missing or unreadable.
        ValueError: an input cannot be used (no frame store, tokenizer or weights there), or a file leaves no
            usable row.
    """
    known = set(check_inputs(cfg).ids())
    if cfg.data.task == "pretrain":
        return _pretrain_task(cfg, known)
    ans2label = None
    if cfg.data.task == "qa":
        if cfg.data.ans2label_file:
            ans2label = load_ans2label(cfg.data.ans2label_file)
        else:
            ans2label = build_ans2label(load_annotations(cfg.data.train_file, known_video_ids=known)[0])
    train, train_report = load_annotations(cfg.data.train_file, known_video_ids=known, ans2label=ans2label)
    val, val_report = load_annotations(cfg.data.val_file, known_video_ids=known, ans2label=ans2label)
    reports = [train_report, val_report]
    if cfg.data.task == "qa":
        unseen = sum(r["label"] < 0 for r in train)
        if unseen:
            logger.warning("dropping %d training questions whose answer is not in the vocabulary", unseen)
        train = [r for r in train if r["label"] >= 0]
    val_mc, test = [], []
    if cfg.data.val_mc_file:
        val_mc, mc_report = load_annotations(cfg.data.val_mc_file, known_video_ids=known)
        reports.append(mc_report)
    if cfg.data.test_file:
        test, test_report = load_annotations(cfg.data.test_file, known_video_ids=known, ans2label=ans2label)
        reports.append(test_report)
    test_mc = []
    if cfg.data.test_mc_file:
        test_mc, test_mc_report = load_annotations(cfg.data.test_mc_file, known_video_ids=known)
        reports.append(test_mc_report)
    return TaskData(train, val, val_mc, test, len(ans2label) if ans2label else 0, reports, test_mc)


def _pretrain_task(cfg: Config, known: set[str]) -> TaskData:
    """Caption rows of image-text pretraining: training captions grouped per image (clipbert.training.pretraining), held-out
    captions one per row."""
    from clipbert.training.pretraining import group_captions

    train, train_report = load_annotations(cfg.data.train_file, known_video_ids=known)
    val, val_report = load_annotations(cfg.data.val_file, known_video_ids=known)
    groups = group_captions(train, cfg.data.caption_group_size, np.random.default_rng(cfg.train.seed))
    for rows, what in ((groups, cfg.data.train_file), (val, cfg.data.val_file)):
        if len({r["video_id"] for r in rows}) < 2:
            raise ValueError(f"{what}: mismatched captions need captions of at least two images")
    return TaskData(groups, val, [], [], 0, [train_report, val_report])


def keep_idle_workers(minimum: int = 32) -> None:
    """Before this process starts a local Ray: let it keep up to max(minimum, CPUs) idle worker processes.

    Ray's default limit is one worker process per CPU, counting every actor; with the training workers and Ray
    Train's and Ray Data's own actors a small machine is always over it, so the data stage's idle task workers
    are killed a second after each epoch or evaluation, and the next epoch waits seconds for new ones to import
    torch. No effect on a cluster this process only connects to: set the variable where `ray start` runs.
    """
    os.environ.setdefault(IDLE_WORKERS_ENV, str(max(minimum, os.cpu_count() or 1)))


def plan_resources(cluster: dict[str, float], num_workers: int, use_gpu: bool) -> tuple[float, float]:
    """(CPUs per training worker, CPUs per data task) so that workers AND the data stage fit the cluster.

    Each worker gets one CPU when the cluster has enough; on a small machine the workers share what is
    left after one CPU for the data stage (2 cores: 2 workers x 0.5 + data). Raises ValueError with the
    numbers when the workers cannot be placed at all, instead of letting Ray wait forever.
    """
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1, got {num_workers}")
    if use_gpu and num_workers > gpus:
        raise ValueError(f"--num-workers {num_workers} needs {num_workers} GPUs; the cluster has {gpus:g}")
    if cpus - num_workers >= 1:
        return 1.0, 1.0
    per_worker = (cpus - 1.0) / num_workers if cpus >= 2 else cpus / (2 * num_workers)
    if per_worker < MIN_CPUS_PER_WORKER:
        raise ValueError(
            f"--num-workers {num_workers} cannot be placed: the cluster has {cpus:g} CPUs, and each worker needs "
            f">= {MIN_CPUS_PER_WORKER} CPU besides the data stage; use at most "
            f"{max(1, int((cpus - 1) / MIN_CPUS_PER_WORKER))} workers or add nodes"
        )
    return per_worker, min(0.5, cpus / 2)


def schedule(cfg: Config, num_rows: int, num_workers: int) -> tuple[int, int]:
    """(optimiser steps per epoch, total steps), as the original: every worker steps on equal shares."""
    per_step = cfg.optim.batch_size * num_workers * cfg.optim.grad_accum_steps
    steps_per_epoch = num_rows // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"{num_rows} training rows do not fill one step of {per_step} "
                         "(batch_size x workers x grad_accum_steps)")
    return steps_per_epoch, max(1, math.ceil(cfg.optim.num_epochs * steps_per_epoch))


def worker_resources(cfg: Config, cluster: dict[str, float] | None = None) -> tuple[float, float]:
    """(CPUs per training worker, CPUs per data task) of a run: fixed by train.cpus_per_worker, else planned
    against ``cluster`` (a sweep trial's share) or, by default, the whole cluster as it is now."""
    if cfg.train.cpus_per_worker > 0:
        return cfg.train.cpus_per_worker, 1.0
    if cluster is None:
        import ray

        cluster = ray.cluster_resources()
    return plan_resources(cluster, cfg.train.num_workers, cfg.train.use_gpu)


def build_trainer(cfg: Config, task: TaskData, *, storage_path: str, name: str,
                  cluster: dict[str, float] | None = None, callbacks: Sequence = ()):
    """A TorchTrainer over the training rows, with checkpointing, failure handling and the data stage.

    ``cluster``: the resources this run may use (default: the whole cluster); ``callbacks``: Ray Train run
    callbacks (a sweep passes Tune's report callback).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cpus_per_worker, data_cpus = worker_resources(cfg, cluster)
    steps_per_epoch, total_steps = schedule(cfg, len(task.train), cfg.train.num_workers)
    cfg_dict = config_to_dict(cfg)
    negatives = None  # the captions that mismatched (negative) captions are drawn from
    if cfg.data.task in ("retrieval", "pretrain"):
        pairs = [(r["video_id"], t) for r in task.train for t in r["texts"]]
        negatives = (np.array([v for v, _ in pairs]), np.array([t for _, t in pairs]))
    rows = [{k: r[k] for k in ("example_id", "video_id", "texts", "label")} for r in task.train]
    # The shuffle re-runs every epoch and its tasks scale with the block count: from_items' default of one block per
    # row (up to 200) costs seconds per epoch on small data. Blocks of a few batches keep it cheap; make_batch tasks
    # (one per block) stay parallel on large data. The shuffle tasks take the data stage's CPU share: at their
    # default of 1 CPU they fit no node where the workers hold part of the only CPU, and the run would wait forever.
    num_blocks = max(1, min(MAX_BLOCKS, math.ceil(len(rows) / (cfg.optim.batch_size * BATCHES_PER_BLOCK))))
    ds = ray.data.from_items(rows, override_num_blocks=num_blocks).random_shuffle(seed=None, num_cpus=data_cpus)
    ds = ds.map_batches(make_pretrain_batch if cfg.data.task == "pretrain" else make_batch,
                        batch_size=cfg.optim.batch_size, num_cpus=data_cpus,
                        fn_kwargs={"cfg": cfg_dict, "train": True, "negatives": negatives})
    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})}
    loop_config = {
        "cfg": cfg_dict, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
        "val_rows": task.val, "val_mc_rows": task.val_mc,
        "tensorboard_dir": storage.join(storage_path, name, "tensorboard"),  # a URI: uploaded by rank 0
        "fault_at_step": int(os.environ.get(FAULT_ENV, "0")),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=cfg.train.placement_strategy),
        run_config=RunConfig(
            name=name, storage_path=storage_path, callbacks=list(callbacks),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                               checkpoint_score_attribute=cfg.train.metric,
                                               checkpoint_score_order=cfg.train.metric_mode),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
        ),
        datasets={"train": ds},
    )


def prepare_run(cfg: Config, storage_path: str) -> TaskData:
    """Everything a run checks on the driver before Ray is needed: storage, inputs, annotations, answers."""
    check_storage(storage_path)
    task = prepare_task(cfg)
    check_answers(cfg, task)
    return task


def run_training(cfg: Config, *, storage_path: str, name: str, task: TaskData | None = None) -> dict[str, Any]:
    """``prepare_run`` (unless its ``task`` is given), then ``fit_and_export``."""
    task = task if task is not None else prepare_run(cfg, storage_path)
    return fit_and_export(cfg, task, storage_path=storage_path, name=name)


def check_answers(cfg: Config, task: TaskData) -> None:
    """A QA answer vocabulary must fit the model's answer head."""
    if cfg.data.task == "qa" and task.num_answers > cfg.model.num_answers:
        raise ValueError(f"{task.num_answers} answers do not fit model.num_answers={cfg.model.num_answers}")


def fit_and_export(cfg: Config, task: TaskData, *, storage_path: str, name: str,
                   cluster: dict[str, float] | None = None, callbacks: Sequence = ()) -> dict[str, Any]:
    """Fit; export the checkpoint chosen on validation to STORAGE/NAME/best/; evaluate it once on the test rows;
    write STORAGE/NAME/final_metrics.json: ``val`` (the chosen evaluation's metrics) and ``test`` side by side.

    A run that resumes (same storage and name) first drops a newest checkpoint that cannot be loaded (see
    ``drop_corrupt_checkpoints``). A storage error of the run (a full disk) is raised as one OSError naming the path.
    """
    result = _fit_resuming(cfg, task, storage_path=storage_path, name=name, cluster=cluster, callbacks=callbacks)
    best_ckpt, best_metrics = best_checkpoint(result, cfg.train.metric, cfg.train.metric_mode)
    best_dir = storage.join(storage_path, name, "best")
    with best_ckpt.as_directory() as src:
        storage.replace_dir(src, best_dir, (WEIGHTS_NAME, CONFIG_NAME))
    if "fuse_weight" in best_metrics:  # searches with this checkpoint re-rank by the same score
        storage.write_bytes(storage.join(best_dir, RERANK_NAME),
                            json.dumps({"fuse_weight": best_metrics["fuse_weight"]}).encode())
    test = evaluate_test_split(cfg, task.test, best_ckpt, worker_resources(cfg, cluster)[0], task.test_mc,
                               best_metrics.get("fuse_weight"))
    final = {"metric": cfg.train.metric, "val": best_metrics, "test": test, "step": best_metrics.get("step"),
             "checkpoint": best_ckpt.path, "exported": best_dir, "last": result.metrics}
    storage.write_bytes(storage.join(storage_path, name, "final_metrics.json"),
                        json.dumps(final, indent=2, default=float).encode())
    if test:
        logger.info("test split (%d rows) at step %s: %s", len(task.test), final["step"],
                    ", ".join(f"{k} {v:.3g}" for k, v in test.items()))
    return final


CONTROLLER_RESTARTS = 1  # runs started again after a Ray Train controller failure that Ray does not retry itself


def _fit_resuming(cfg: Config, task: TaskData, *, storage_path: str, name: str, cluster: dict[str, float] | None,
                  callbacks: Sequence):
    """``trainer.fit()``, started again (resuming from the last checkpoint) after a controller failure that Ray Train
    does not retry itself, such as a worker that died while its group was starting: at most CONTROLLER_RESTARTS
    times. A storage error (a full disk) is raised at once as one OSError naming the path."""
    from ray.train import ControllerError

    run, restarts = storage.join(storage_path, name), 0
    while True:
        drop_corrupt_checkpoints(storage_path, name)
        trainer = build_trainer(cfg, task, storage_path=storage_path, name=name, cluster=cluster, callbacks=callbacks)
        try:
            result = trainer.fit()
            if result.error:
                raise result.error
            return result
        except Exception as e:  # Ray Train raises the run's error after its own retries
            _raise_storage_error(e, run)
            restarts += 1
            if not isinstance(e, ControllerError) or restarts > CONTROLLER_RESTARTS:
                raise
            logger.warning("run %s: Ray Train's controller failed (%s); starting it again from its last checkpoint",
                           run, one_line(e))


def evaluate_test_split(cfg: Config, rows: Sequence[Row], checkpoint, cpus: float,
                        mc_rows: Sequence[Row] = (), fuse_weight: float | None = None) -> dict[str, float] | None:
    """The task's metrics of a reported ``ray.train.Checkpoint`` on held-out rows (dense inference, as validation,
    with the re-rank score's ITC weight that validation chose),
    computed once, in a Ray task with a training worker's resources (a GPU when the run trains on GPUs), which reads
    the checkpoint from the run's storage; None without rows."""
    if not rows:
        return None
    import ray

    # "DEFAULT": outside the placement group of a sweep trial, which holds only its own function's sliver of CPU
    task = ray.remote(_evaluate_checkpoint).options(num_cpus=cpus, num_gpus=1 if cfg.train.use_gpu else 0,
                                                    scheduling_strategy="DEFAULT")
    return ray.get(task.remote(cfg, list(rows), checkpoint, max(1, math.ceil(cpus)), list(mc_rows), fuse_weight))


def _evaluate_checkpoint(cfg: Config, rows: list[Row], checkpoint, threads: int,
                         mc_rows: list[Row], fuse_weight: float | None) -> dict[str, float]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(threads)
    with checkpoint.as_directory() as directory:
        model, _ = load_checkpoint(directory, map_location=device)
    return evaluate(model, cfg, rows, device, mc_rows=mc_rows, fuse_weight=fuse_weight)


def best_checkpoint(result, metric: str, mode: str):
    """(checkpoint, metrics) of the best reported checkpoint by ``metric``."""
    candidates = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if not candidates:
        raise RuntimeError(f"the run reported no checkpoint with metric {metric!r}")
    pick = max if mode == "max" else min
    return pick(candidates, key=lambda cm: cm[1][metric])


def check_storage(storage_path: str) -> None:
    """The storage path must be writable: a local directory (created if missing) or a URI (a probe file is
    written and deleted through pyarrow.fs)."""
    try:
        storage.check_writable(storage_path)
    except Exception as e:  # OSError locally; pyarrow raises OSError or ArrowException subclasses for URIs
        reason = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
        raise PermissionError(f"--storage-path {storage_path} is not writable: {reason}") from None


def _raise_storage_error(error: BaseException, run: str) -> None:
    """A run that failed on storage (a full disk) ends with one OSError naming the path: the error behind ``error``
    (a worker's, found through Ray Train's wrappers), or nothing happens."""
    cause = storage.os_error_in(error)
    if cause is None:
        return
    where = "" if run in cause.strerror else f" (in run {run})"  # Ray's checkpoint upload errors name no file
    raise OSError(cause.errno, f"{cause.strerror}{where}; checkpoints reported before it are kept: fix that, then "
                  "re-run the same command to resume from the last one") from error


# ------------------------------------------------------------------------------- resuming from a good checkpoint
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run's checkpoints (Ray 2.60 format)
CORRUPT_DIR = "corrupt_checkpoints"  # where a run's unreadable checkpoints are moved, for inspection


def drop_corrupt_checkpoints(storage_path: str, name: str) -> list[str]:
    """Before a run resumes: make Ray Train restore the newest checkpoint that can be loaded.

    Ray Train V2 restores the latest checkpoint of its snapshot (STORAGE/NAME/checkpoint_manager_snapshot.json)
    whatever its state on disk; a truncated or overwritten one would fail every restart. While the newest one
    (by reported step) cannot be loaded (``checkpoint.checkpoint_problem``), this logs a warning naming it and the
    reason, moves it to STORAGE/NAME/corrupt_checkpoints/ and removes it from the snapshot, so the previous good
    one is restored. Returns the dropped checkpoint directory names (none for a new run).
    """
    from clipbert.model.checkpoint import checkpoint_problem
    from clipbert.training.loop import STATE_NAME

    run = storage.join(storage_path, name)
    try:
        snapshot = json.loads(storage.read_bytes(storage.join(run, RAY_SNAPSHOT)))
    except FileNotFoundError:
        return []
    dropped: list[str] = []
    while snapshot.get("latest_checkpoint_result"):
        latest = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
        problem = checkpoint_problem(storage.join(run, latest), (STATE_NAME,))
        if problem is None:
            break
        _forget_checkpoint(snapshot, latest)
        fallback = snapshot["latest_checkpoint_result"]
        logger.warning("checkpoint %s of run %s is corrupt (%s): moved to %s/; resuming from %s", latest, run,
                       problem, CORRUPT_DIR, fallback["checkpoint_dir_name"] if fallback else "the start (no "
                       "other checkpoint is left)")
        dropped.append(latest)
    if dropped:  # the snapshot first: one that names a missing checkpoint would stop Ray Train from starting
        storage.write_bytes(storage.join(run, RAY_SNAPSHOT), json.dumps(snapshot).encode())
    for name in dropped:
        _move_aside(run, name)
    return dropped


def _forget_checkpoint(snapshot: dict, dir_name: str) -> None:
    """Remove a checkpoint from a Ray Train snapshot; the newest remaining one (by step) becomes the latest."""
    keep = [i for i, r in enumerate(snapshot["checkpoint_results"]) if r["checkpoint_dir_name"] != dir_name]
    snapshot["checkpoint_results"] = [snapshot["checkpoint_results"][i] for i in keep]
    snapshot["checkpoint_report_indices"] = [snapshot["checkpoint_report_indices"][i] for i in keep]
    pending = [i for i, r in enumerate(snapshot.get("pending_training_results", []))
               if r["checkpoint_dir_name"] != dir_name]
    snapshot["pending_training_results"] = [snapshot["pending_training_results"][i] for i in pending]
    snapshot["pending_validation_specs"] = [snapshot["pending_validation_specs"][i] for i in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        snapshot[key] = [d for d in snapshot.get(key, []) if d != dir_name]
    newest = max(zip(snapshot["checkpoint_results"], snapshot["checkpoint_report_indices"]), default=None,
                 key=lambda ri: (ri[0]["metrics"].get("step", -1), ri[1]))
    snapshot["latest_checkpoint_result"] = newest[0] if newest else None


def _move_aside(run: str, dir_name: str) -> None:
    """Move RUN/dir_name to RUN/corrupt_checkpoints/dir_name (left in place, with a warning, if that fails)."""
    fsys, inner = storage.resolve(storage.join(run, dir_name))
    target = storage.resolve(storage.join(run, CORRUPT_DIR, dir_name))[1]
    try:
        fsys.create_dir(target.rsplit("/", 1)[0], recursive=True)
        fsys.move(inner, target)
    except Exception as e:  # e.g. stores that cannot rename directories: the snapshot no longer names it anyway
        logger.warning("could not move %s aside (%s): it stays where it is", inner, e)
