"""The per-worker Ray Train loop: sparse-clip finetuning with AMP, DDP, grad accumulation, evaluation and checkpoints.

``train_loop_per_worker`` runs in every Ray Train worker; the driver (clipbert/training/run.py) builds its config.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from clipbert import storage
from clipbert.model.checkpoint import WEIGHTS_NAME, build_model, save_checkpoint
from clipbert.config import Config, config_from_dict
from clipbert.training.evaluation import evaluate
from clipbert.model.losses import contrastive_loss, task_loss
from clipbert.model.optim import apply_lr, build_optimizer
from clipbert.training.pretraining import pretrain_loss
from clipbert.model.scoring import autocast

logger = logging.getLogger(__name__)

STATE_NAME = "train_state.pt"  # optimiser / scaler state, step and epoch, next to the model weights
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # how often Ray Train's controller polls its workers (2 s)
LOOP_METRICS = ("step", "epoch", "eval_s", "train_samples_per_s", "data_wait_fraction", "resumed_from_step")
# reported with the validation metrics at every evaluation

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


def batch_loss(model, cfg: Config, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of one batch (make_batch's columns): the task head's loss with clip consensus, plus the
    weighted InfoNCE loss when the model has contrastive heads; for pretraining (make_pretrain_batch's columns) the
    MLM + ITM loss."""
    if cfg.data.task == "pretrain":
        return pretrain_loss(model, cfg, batch)
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
            with (ddp.no_sync() if (world > 1 and not sync) else nullcontext()), autocast(device, precision):
                loss = batch_loss(ddp, cfg, batch)
            scaler.scale(loss / accum).backward()
            progress.add(batch["label"].shape[0], waited)
            progress.loss_sum, progress.loss_count = progress.loss_sum + loss.item(), progress.loss_count + 1
            if sync:
                lrs = optimizer_step(optimizer, scaler, params, cfg, progress.step, total)
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


def optimizer_step(optimizer, scaler, params, cfg: Config, step: int, total: int) -> list[float]:
    """Unscale, clip, set the scheduled learning rates of `step` of `total`, step and zero the gradients; returns
    the groups' learning rates."""
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


def fault_grace_s() -> float:
    """How long an injected fault waits before the process exits: three of the controller's polls (6 s by default).
    Ray Train registers a checkpoint only once its controller has polled every rank's report, so an earlier exit
    could lose the checkpoint just reported."""
    return 3.0 * float(os.environ.get(TRAIN_POLL_ENV, "2.0"))


def _maybe_inject_fault(fault_at_step: int | None, progress: _Progress, rank: int, world: int) -> None:
    """Fault injection for tests: the last rank exits abruptly at ``fault_at_step``, once per run (only in an
    attempt that did not start from a checkpoint, so the restored attempt goes past it)."""
    if fault_at_step and progress.step == fault_at_step and progress.resumed_from == 0 and rank == world - 1:
        grace_s = fault_grace_s()
        logger.error("fault injection: rank %d exits at step %d in %.1f s", rank, progress.step, grace_s)
        time.sleep(grace_s)
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
            writer.flush()
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
    """A TensorBoard writer on ``log_dir``; for a storage URI, one on a local directory whose event files are
    uploaded there at every flush (each evaluation) and at the end."""
    if not log_dir:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        logger.warning("tensorboardX is not installed: no TensorBoard events")
        return None
    if storage.is_uri(log_dir):
        return _UploadingWriter(SummaryWriter(tempfile.mkdtemp(prefix="clipbert_tb_")), log_dir)
    os.makedirs(log_dir, exist_ok=True)
    return SummaryWriter(log_dir)


class _UploadingWriter:
    """A SummaryWriter on a local directory, copied to a storage URI on ``flush`` and ``close``."""

    def __init__(self, writer, uri: str):
        self.writer, self.uri = writer, uri

    def add_scalar(self, *args, **kwargs) -> None:
        self.writer.add_scalar(*args, **kwargs)

    def flush(self) -> None:
        self.writer.flush()
        self._upload()

    def close(self) -> None:
        self.writer.close()
        self._upload()
        shutil.rmtree(self.writer.logdir, ignore_errors=True)

    def _upload(self) -> None:
        try:
            storage.upload_dir(self.writer.logdir, self.uri)
        except OSError as e:  # events are a by-product: a failed upload must not stop training
            logger.warning("could not upload TensorBoard events to %s: %s", self.uri, e)
