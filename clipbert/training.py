"""Ray Train finetuning: the per-worker loop (importable, reused by sweeps) and the driver that builds and runs it.

Driver side: ``prepare_task`` reads the annotations against the frame store, ``build_trainer`` wires a Ray Data
dataset of annotation rows -> ``batches.make_batch`` (fresh sparse clips every epoch) into a ``TorchTrainer``,
``run_training`` fits it and exports the best checkpoint. Worker side: ``train_loop_per_worker``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipbert.batches import make_batch
from clipbert.checkpoint import CONFIG_NAME, WEIGHTS_NAME, build_model, save_checkpoint
from clipbert.config import Config, config_from_dict, config_to_dict
from clipbert.data import LoadReport, Row, build_ans2label, load_ans2label, load_annotations
from clipbert.evaluation import evaluate
from clipbert.frames import FrameStore
from clipbert.losses import contrastive_loss, task_loss
from clipbert.model import apply_lr, build_optimizer
from clipbert.scoring import autocast

logger = logging.getLogger(__name__)

STATE_NAME = "train_state.pt"  # optimiser / scaler state, step and epoch, next to the model weights
FAULT_ENV = "CLIPBERT_FAULT_AT_STEP"  # fault injection for tests: the last rank exits once at this optimiser step
FAULT_GRACE_S = 6.0  # the injected fault waits this long: Ray Train registers a checkpoint only once its controller
# has polled every rank's report (every 2 s), so an earlier exit could lose the checkpoint just reported
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
    num_answers: int  # QA label count (0 for other tasks)
    reports: list[LoadReport] = dataclasses.field(default_factory=list)  # what each annotation file kept/skipped


# ------------------------------------------------------------------------------------------------ driver
def prepare_task(cfg: Config) -> TaskData:
    """Read train/val annotations, keeping rows whose video is in the frame store (others are reported).

    Raises:
        FileNotFoundError: the frame store, an annotation file or the tokenizer is missing.
        ValueError: a file leaves no usable row.
    """
    if not Path(cfg.data.frame_store).is_dir():
        raise FileNotFoundError(f"data.frame_store: no such frame-store directory: {cfg.data.frame_store!r}")
    store = FrameStore(cfg.data.frame_store)
    known = set(store.ids())
    tokenizer = Path(cfg.data.tokenizer)
    if not tokenizer.exists():
        raise FileNotFoundError(f"data.tokenizer: no such file or directory: {tokenizer}")
    for key in ("train_file", "val_file"):
        if not Path(getattr(cfg.data, key)).is_file():
            raise FileNotFoundError(f"data.{key}: no such annotation file: {getattr(cfg.data, key)!r}")
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
    val_mc = []
    if cfg.data.val_mc_file:
        val_mc, mc_report = load_annotations(cfg.data.val_mc_file, known_video_ids=known)
        reports.append(mc_report)
    return TaskData(train, val, val_mc, len(ans2label) if ans2label else 0, reports)


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
    return per_worker, 0.5


def schedule(cfg: Config, num_rows: int, num_workers: int) -> tuple[int, int]:
    """(optimiser steps per epoch, total steps), as the original: every worker steps on equal shares."""
    per_step = cfg.optim.batch_size * num_workers * cfg.optim.grad_accum_steps
    steps_per_epoch = num_rows // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"{num_rows} training rows do not fill one step of {per_step} "
                         "(batch_size x workers x grad_accum_steps)")
    return steps_per_epoch, max(1, math.ceil(cfg.optim.num_epochs * steps_per_epoch))


def build_trainer(cfg: Config, task: TaskData, *, storage_path: str, name: str):
    """A TorchTrainer over the training rows, with checkpointing, failure handling and the data stage."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if cfg.train.cpus_per_worker > 0:
        cpus_per_worker, data_cpus = cfg.train.cpus_per_worker, 1.0
    else:
        cpus_per_worker, data_cpus = plan_resources(ray.cluster_resources(), cfg.train.num_workers,
                                                    cfg.train.use_gpu)
    steps_per_epoch, total_steps = schedule(cfg, len(task.train), cfg.train.num_workers)
    cfg_dict = config_to_dict(cfg)
    negatives = (np.array([r["video_id"] for r in task.train]), np.array([r["texts"][0] for r in task.train]))
    rows = [{k: r[k] for k in ("example_id", "video_id", "texts", "label")} for r in task.train]
    # The shuffle re-runs every epoch and its tasks scale with the block count: from_items' default of one block per
    # row (up to 200) costs seconds per epoch on small data. Blocks of a few batches keep it cheap; make_batch tasks
    # (one per block) stay parallel on large data. The shuffle tasks take the data stage's CPU share: at their
    # default of 1 CPU they fit no node where the workers hold part of the only CPU, and the run would wait forever.
    num_blocks = max(1, min(MAX_BLOCKS, math.ceil(len(rows) / (cfg.optim.batch_size * BATCHES_PER_BLOCK))))
    ds = ray.data.from_items(rows, override_num_blocks=num_blocks).random_shuffle(seed=None, num_cpus=data_cpus)
    ds = ds.map_batches(make_batch, batch_size=cfg.optim.batch_size, num_cpus=data_cpus,
                        fn_kwargs={"cfg": cfg_dict, "train": True, "negatives": negatives})
    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})}
    run_dir = Path(storage_path) / name if "://" not in storage_path else None
    loop_config = {
        "cfg": cfg_dict, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
        "val_rows": task.val, "val_mc_rows": task.val_mc,
        "tensorboard_dir": str(run_dir / "tensorboard") if run_dir else None,
        "fault_at_step": int(os.environ.get(FAULT_ENV, "0")),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=cfg.train.placement_strategy),
        run_config=RunConfig(
            name=name, storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                               checkpoint_score_attribute=cfg.train.metric,
                                               checkpoint_score_order=cfg.train.metric_mode),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
        ),
        datasets={"train": ds},
    )


def run_training(cfg: Config, *, storage_path: str, name: str) -> dict[str, Any]:
    """Fit, then write STORAGE/NAME/final_metrics.json and export the best checkpoint to STORAGE/NAME/best/."""
    check_storage(storage_path)
    task = prepare_task(cfg)
    if cfg.data.task == "qa" and task.num_answers > cfg.model.num_answers:
        raise ValueError(f"{task.num_answers} answers do not fit model.num_answers={cfg.model.num_answers}")
    result = build_trainer(cfg, task, storage_path=storage_path, name=name).fit()
    if result.error:
        raise result.error
    best_ckpt, best_metrics = best_checkpoint(result, cfg.train.metric, cfg.train.metric_mode)
    run_dir = Path(storage_path) / name
    best_dir = run_dir / "best"
    with best_ckpt.as_directory() as src:
        shutil.rmtree(best_dir, ignore_errors=True)
        best_dir.mkdir(parents=True)
        for fname in (WEIGHTS_NAME, CONFIG_NAME):
            shutil.copy2(Path(src) / fname, best_dir / fname)
    final = {"metric": cfg.train.metric, "best": best_metrics, "step": best_metrics.get("step"),
             "checkpoint": best_ckpt.path, "exported": str(best_dir), "last": result.metrics}
    (run_dir / "final_metrics.json").write_text(json.dumps(final, indent=2, default=float))
    return final


def best_checkpoint(result, metric: str, mode: str):
    """(checkpoint, metrics) of the best reported checkpoint by ``metric``."""
    candidates = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if not candidates:
        raise RuntimeError(f"the run reported no checkpoint with metric {metric!r}")
    pick = max if mode == "max" else min
    return pick(candidates, key=lambda cm: cm[1][metric])


def check_storage(storage_path: str) -> None:
    """A local storage path must be a writable directory (created if missing); URIs are left to Ray."""
    if "://" in storage_path:
        return
    try:
        Path(storage_path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=storage_path):
            pass
    except OSError as e:
        raise PermissionError(f"--storage-path {storage_path} is not writable: {e.strerror or e}") from None


# ------------------------------------------------------------------------------------------------ worker
@dataclasses.dataclass
class _Window:
    """Throughput counters of one worker over a time window (between log lines, or between evaluations)."""

    samples: int = 0  # training rows seen by this worker
    wait_s: float = 0.0  # time spent waiting for the next batch
    since: float = dataclasses.field(default_factory=time.perf_counter)

    def rates(self, world: int) -> tuple[float, float]:
        """(samples/s of all workers, assuming equal shards; fraction of the window spent waiting for data)."""
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        return self.samples * world / elapsed, self.wait_s / elapsed


@dataclasses.dataclass
class _Progress:
    step: int = 0  # optimiser steps done
    epoch: int = 0  # passes over the data started
    resumed_from: int = 0  # step of the checkpoint this attempt started from (0 = fresh start)
    loss_sum: float = 0.0
    loss_count: int = 0
    log: _Window = dataclasses.field(default_factory=_Window)  # since the last log line
    report: _Window = dataclasses.field(default_factory=_Window)  # since the last evaluation

    def add(self, samples: int, wait_s: float) -> None:
        for window in (self.log, self.report):
            window.samples += samples
            window.wait_s += wait_s


def _precision(cfg: Config, device: torch.device) -> str:
    """The autocast precision to use: on CPU always fp32 (bf16 autocast is slower there); bf16 falls back
    to fp16 on GPUs without bf16."""
    if device.type != "cuda":
        return "fp32"
    if cfg.train.precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return cfg.train.precision


def cpu_threads(configured: int, local_workers: int) -> int:
    """Intra-op threads of a CPU training worker: ``configured`` when > 0, else this process's usable cores
    divided among the training workers of its node. The data stage's tasks share those cores; they need a
    small part of them (bench/train.py measures the data-wait fraction)."""
    if configured > 0:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_workers))


def _restore(ckpt, model: torch.nn.Module, optimizer, scaler, device: torch.device) -> _Progress:
    from safetensors.torch import load_file

    with ckpt.as_directory() as d:
        model.load_state_dict(load_file(str(Path(d) / WEIGHTS_NAME), device=str(device)))
        state = torch.load(Path(d) / STATE_NAME, map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    logger.info("resumed from step %d (epoch %d)", state["step"], state["epoch"])
    return _Progress(step=int(state["step"]), epoch=int(state["epoch"]), resumed_from=int(state["step"]))


def _loss(model, cfg: Config, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    frames, ids, mask = batch["frames"], batch["input_ids"], batch["attention_mask"]
    labels = None if cfg.model.head == "itm" else batch["label"]
    if not cfg.model.contrastive:
        return task_loss(cfg.model.head, model(frames, ids, mask), labels, cfg.model.consensus)
    same = None
    if cfg.optim.itm_hard_negatives and cfg.model.head == "itm":
        key = batch["video_key"]
        same = key[:, None] == key[None, :]  # (B, B)
        if bool(same.all()):
            same = None  # one video in the batch: nothing to mine
    out = model(frames, ids, mask, return_embeddings=True, hard_negatives=same)
    itc = contrastive_loss(out.video_embeds, out.text_embeds, out.logit_scale)
    return task_loss(cfg.model.head, out.logits, labels, cfg.model.consensus) + cfg.optim.itc_weight * itc


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: sparse-clip finetuning with AMP, DDP, grad accumulation, evaluation and checkpoints.

    ``config`` keys: ``cfg`` (config_to_dict), ``steps_per_epoch``, ``total_steps``, ``val_rows``,
    ``val_mc_rows``, ``tensorboard_dir`` (or None), optional ``fault_at_step`` (fault injection for tests, set
    from the CLIPBERT_FAULT_AT_STEP environment variable of the driver: the last rank exits abruptly at that
    step in an attempt that did not start from a checkpoint). Every evaluation is reported by every rank through
    ``ray.train.report``; rank 0 attaches the checkpoint (model.safetensors + config.json + train_state.pt).
    Reported metrics: the validation metrics, ``step``, ``epoch``, ``eval_s``, ``train_samples_per_s`` (all
    workers, since the previous evaluation), ``data_wait_fraction`` (of rank 0's time since the previous
    evaluation spent waiting for the next batch) and ``resumed_from_step`` (0 unless restored from a checkpoint).
    """
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed + rank)
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg.train.cpu_threads, ctx.get_local_world_size()))
        if rank == 0:
            logger.info("CPU training with %d torch threads per worker", torch.get_num_threads())
    precision = _precision(cfg, device)
    model, reports = build_model(cfg.model)
    if rank == 0:
        for report in reports:
            logger.info("%s", report.summary())
    model.set_gradient_checkpointing(cfg.model.gradient_checkpointing)
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ckpt = ray.train.get_checkpoint()
    progress = _restore(ckpt, model, optimizer, scaler, device) if ckpt else _Progress()
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    writer = _tensorboard(config.get("tensorboard_dir")) if rank == 0 else None
    total, accum = config["total_steps"], cfg.optim.grad_accum_steps
    shard = ray.train.get_dataset_shard("train")
    params = [p for p in model.parameters() if p.requires_grad]
    ddp.train()
    while progress.step < total:
        progress.epoch += 1
        micro, batches = 0, 0
        tick = time.perf_counter()
        for batch in shard.iter_torch_batches(batch_size=cfg.optim.batch_size, drop_last=True, device=device):
            waited = time.perf_counter() - tick
            batches += 1
            micro += 1
            sync = micro % accum == 0
            with (ddp.no_sync() if (world > 1 and not sync) else _null()), autocast(device, precision):
                loss = _loss(ddp, cfg, batch)
            scaler.scale(loss / accum).backward()
            progress.add(batch["label"].shape[0], waited)
            progress.loss_sum, progress.loss_count = progress.loss_sum + loss.item(), progress.loss_count + 1
            if sync:
                lrs = _optimizer_step(optimizer, scaler, params, cfg, progress.step, total)
                progress.step += 1
                _maybe_inject_fault(config.get("fault_at_step"), progress, rank, world)
                if rank == 0 and progress.step % cfg.train.log_every_steps == 0:
                    _log(progress, lrs, world, writer)
                if progress.step % cfg.train.eval_every_steps == 0 or progress.step == total:
                    _evaluate_and_report(model, cfg, config, progress, optimizer, scaler, rank, world, device, writer)
                if progress.step >= total:
                    break
            tick = time.perf_counter()
        if batches == 0:
            raise RuntimeError("the training data shard yielded no batch: fewer rows than batch_size per worker")
    if writer:
        writer.close()


def _null():
    from contextlib import nullcontext

    return nullcontext()


def _optimizer_step(optimizer, scaler, params, cfg: Config, step: int, total: int) -> list[float]:
    scaler.unscale_(optimizer)
    if cfg.optim.grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_norm)
    lrs = apply_lr(optimizer, step, total, cfg.optim.warmup_ratio)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return lrs


def _log(progress: _Progress, lrs: list[float], world: int, writer) -> None:
    loss = progress.loss_sum / max(progress.loss_count, 1)
    rate, wait = progress.log.rates(world)
    logger.info("step %d epoch %d loss %.4f lr %.2e samples/s %.1f data-wait %.0f%%",
                progress.step, progress.epoch, loss, max(lrs), rate, 100 * wait)
    if writer:
        for key, value in {"train/loss": loss, "train/lr": max(lrs), "train/samples_per_s": rate,
                           "train/data_wait_fraction": wait}.items():
            writer.add_scalar(key, value, progress.step)
    progress.loss_sum, progress.loss_count, progress.log = 0.0, 0, _Window()


def _maybe_inject_fault(fault_at_step: int | None, progress: _Progress, rank: int, world: int) -> None:
    """Fault injection for tests: the last rank exits abruptly at ``fault_at_step``, once per run (only in an
    attempt that did not start from a checkpoint, so the restored attempt goes past it)."""
    if fault_at_step and progress.step == fault_at_step and progress.resumed_from == 0 and rank == world - 1:
        logger.error("fault injection: rank %d exits at step %d in %.0f s", rank, progress.step, FAULT_GRACE_S)
        time.sleep(FAULT_GRACE_S)
        os._exit(1)


def _evaluate_and_report(model, cfg, config, progress, optimizer, scaler, rank, world, device, writer) -> None:
    import ray.train

    started = time.perf_counter()
    metrics: dict[str, Any] = {}
    if rank == 0:
        rate, wait = progress.report.rates(world)
        start = time.perf_counter()
        metrics = evaluate(model, cfg, config["val_rows"], device, mc_rows=config["val_mc_rows"])
        metrics.update(step=progress.step, epoch=progress.epoch, eval_s=time.perf_counter() - start,
                       train_samples_per_s=rate, data_wait_fraction=wait, resumed_from_step=progress.resumed_from)
        logger.info("eval at step %d: %s", progress.step,
                    ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if isinstance(v, float)))
        if writer:
            for key, value in metrics.items():
                writer.add_scalar(f"val/{key}", value, progress.step)
    if world > 1:
        box = [metrics]
        torch.distributed.broadcast_object_list(box, src=0)
        metrics = box[0]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_checkpoint(model, cfg, tmp)
            torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                        "step": progress.step, "epoch": progress.epoch}, Path(tmp) / STATE_NAME)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)
    progress.report = _Window()
    progress.log.since += time.perf_counter() - started  # log lines measure training, not evaluation


def _tensorboard(log_dir: str | None):
    if not log_dir:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        logger.warning("tensorboardX is not installed: no TensorBoard events")
        return None
    os.makedirs(log_dir, exist_ok=True)
    return SummaryWriter(log_dir)
