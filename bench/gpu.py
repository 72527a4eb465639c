"""One prepared GPU check: the ClipBERT GPU path end to end in a few minutes, as one command, one table, one JSON.

Usage (repository root, on a machine with one CUDA GPU):
    RAY_AUTH_MODE=disabled .venv/bin/python bench/gpu.py --output bench_results               # ~8 minutes
    RAY_AUTH_MODE=disabled .venv/bin/python bench/gpu.py --minutes 5 --output bench_results   # a tighter budget
    RAY_AUTH_MODE=disabled .venv/bin/python bench/gpu.py --smoke --output /tmp/gpu_smoke      # tiny sizes, ~1 minute
``--smoke`` runs every part at tiny sizes, on the GPU when there is one (a quick check of the CUDA paths before the
full run) and on the CPU otherwise (what tests/test_bench_gpu.py runs; there the run_embed job, tested elsewhere, is
left out); ``--device cpu`` forces the CPU. Ray's start-up dominates its time: a minute or more on 2 busy cores.

Packages beyond ``make setup``: the CUDA build of torch==2.13.0 (what pip installs from PyPI on Linux: CUDA 13.0,
driver >= 580; this project's dev machines get a CPU wheel from a local wheel directory instead) and, for the faiss
rows on the GPU, ``pip uninstall -y faiss-cpu && pip install faiss-gpu==1.15.1`` (CUDA 12; the same ``import faiss``).
Without faiss-gpu those rows are skipped with the reason; the script never installs anything. Nothing is downloaded
at run time either: models are random-weight builds of the presets and the frame store is synthesized here. How to
carry a prepared environment to a lent machine: README, "GPU check".

Parts (each prints its time; a part that fails prints its error, which goes into the JSON, and the next one starts):
  train_step       the full-size model (msrvtt_ret: ResNet-50 at 448 px, BERT-base, N=8 clips x T=2 frames, K=2 texts,
                   B=16) on one GPU: one optimiser step as clipbert/training/loop.py takes it (forward + loss, backward,
                   clipping, AdamW) in fp32, bf16 autocast, bf16 + channels_last and bf16 + torch.compile: step time,
                   samples/s, clips/s, MFU against the bf16 matmul peak measured here (8192^2 matmuls); model FLOPs
                   per step are counted with torch.utils.flop_counter.FlopCounterMode on one eager step (matmuls,
                   convolutions, attention; elementwise ops and AdamW not counted); peak GPU memory per variant; the
                   largest batch that fits, without and with gradient checkpointing (doubling until
                   torch.cuda.OutOfMemoryError, then bisecting).
  batched_vs_loop  all B x N clips in one pass against the original's per-clip loop (bench/model.py's measure).
  data_path        the clip stage (clipbert.data.batches.make_batch) as a Ray Data pipeline on every CPU, producing batches
                   of the training shape from a synthetic frame store (JPEGs at 448 x 336) onto the GPU: batches/s
                   it sustains against batches/s the fastest bf16 step consumes; then a short real Ray Train run (1 GPU
                   worker, the full-size config, two evaluation windows): its data_wait_fraction and samples/s.
  embed            the index job's model stage: pipelines.embed.Embedder on batches of N=16 dense clips (clips/s),
                   and the whole run_embed job (Ray Data, one GPU actor) over the synthetic store.
  faiss            1,000,000 x 256 random unit vectors: build (train + add, clipbert.retrieval.index_build.build_index) and search
                   (10,000 queries, k=10; IVF nprobe=32) of Flat and IVF-Flat on faiss-cpu and on faiss-gpu.

Budget: --minutes (default 8) is shared among the parts in proportion to PART_WEIGHTS, time a part leaves passing on
to the later ones; a part starts no new measurement past its deadline: what it leaves out is a skipped row (a
largest-batch search cut short says complete=false), and a running torch.compile, Ray Train fit or faiss build is not
interrupted.

Output: a table per part and OUTPUT/gpu.json (rewritten after every part): {"machine", "device", "smoke", "sizes",
"parts": {name: {"status": "ok"|"error"|"skipped", "seconds", "error", "rows": [{"what", "status": "ok"|"skipped"|
"error", "reason", figures...}]}}}. Measurements that need CUDA or faiss-gpu are rows with status "skipped" and the
reason, never left out.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import model as model_bench  # noqa: E402  (bench/model.py: matmul peak, batched vs per-clip steps)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import print_table, start_local_ray, write_json  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from clipbert.model.checkpoint import build_model, save_checkpoint  # noqa: E402
from clipbert.config import Config, load_config  # noqa: E402
from clipbert.model.optim import build_optimizer  # noqa: E402
from clipbert.model.scoring import autocast  # noqa: E402
from clipbert.training.loop import batch_loss, optimizer_step  # noqa: E402

PART_WEIGHTS = {"train_step": 0.40, "batched_vs_loop": 0.07, "data_path": 0.27, "embed": 0.11, "faiss": 0.15}
MIN_PART_S = 5.0  # a part given less than this is skipped
COMPILE_RESERVE_S = 120.0  # torch.compile (forward + backward of the full model) is tried only with this much left
TRAIN_RUN_FIXED_S = 60.0  # short Ray Train run: worker start-up, model build, two evaluations and checkpoints
EMBED_JOB_MIN_S = 20.0  # the run_embed job is started only with this much left
MIN_STAGE_BATCHES = 3  # the clip stage's rate is taken over at least this many batches, deadline or not
OOM_MARKERS = ("out of memory", "ALLOC_FAILED")  # RuntimeErrors that mean "does not fit" (cuDNN, cuBLAS)
FLOP_METHOD = ("torch.utils.flop_counter.FlopCounterMode over one eager training step: matmuls, convolutions and "
               "attention of forward + backward; elementwise ops and AdamW not counted")
CAPTION_WORDS = ("a man woman child dog cat car ball bird red blue green small big runs jumps walks talks plays sings "
                 "cooks drives throws catches on in the with at of kitchen street field stage table water").split()


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What the check measures at: FULL on a GPU, SMOKE (tiny, CPU-friendly) with --smoke."""

    preset: str  # training config preset (model, sampling, batch size)
    overrides: tuple[str, ...]  # config overrides on top of the preset
    timed_steps: int  # timed training steps per variant, at most (after one warm-up step)
    loop_steps: int  # timed steps per mode in batched_vs_loop (after one counted warm-up step each)
    peak_seconds: float  # duration of the matmul peak measurement
    max_batch_cap: int  # the largest-batch search stops here
    store_videos: int  # videos in the synthetic frame store
    store_frames: int  # stored frames per video
    store_size: tuple[int, int]  # stored frame (width, height), pixels
    store_fps: float  # stored frames per second
    val_videos: int  # validation videos (one caption each) of the short Ray Train run
    stage_batches: int  # batches the Ray Data clip stage may produce, at most
    run_window_steps: tuple[int, int]  # (min, max) optimiser steps per window of the short Ray Train run
    embed_batch: int  # videos per Embedder call
    embed_clips: int  # N dense clips per video when embedding
    embed_calls: int  # timed Embedder calls, at most
    faiss_vectors: int  # base vectors
    faiss_dim: int  # vector dimension
    faiss_queries: int  # queries per timed search
    nprobe: int  # IVF lists probed per query


FULL = Sizes(preset="msrvtt_ret", overrides=(), timed_steps=8, loop_steps=3, peak_seconds=3.0, max_batch_cap=1024,
             store_videos=64, store_frames=40, store_size=(448, 336), store_fps=4.0, val_videos=8, stage_batches=400,
             run_window_steps=(5, 40), embed_batch=8, embed_clips=16, embed_calls=10,
             faiss_vectors=1_000_000, faiss_dim=256, faiss_queries=10_000, nprobe=32)
SMOKE = Sizes(preset="tiny_ret", overrides=("optim.batch_size=2", "model.img_size=64"), timed_steps=1, loop_steps=1,
              peak_seconds=0.3, max_batch_cap=16, store_videos=6, store_frames=12, store_size=(160, 120),
              store_fps=4.0, val_videos=2, stage_batches=6, run_window_steps=(2, 2), embed_batch=2, embed_clips=2,
              embed_calls=2, faiss_vectors=20_000, faiss_dim=32, faiss_queries=200, nprobe=8)


@dataclasses.dataclass
class Context:
    """What the parts share: device, sizes, scratch directory, and the figures one part passes to the next."""

    device: torch.device
    sizes: Sizes
    workdir: Path
    smoke: bool
    cfg: Config  # the training config (random weights, no data paths)
    peak_flops: float | None = None  # measured bf16 matmul FLOP/s (fp32 on a CPU)
    step: dict[str, Any] | None = None  # the fastest bf16 step: {"variant", "B", "step_s", "samples_per_s"}
    store: Path | None = None  # synthetic corpus root: frames/, tokenizer/, txt/
    ray_started: bool = False
    address: str | None = None  # a Ray cluster to join instead of starting a local Ray

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# ----------------------------------------------------------------------------------------------- rows
def ok(what: str, **figures: Any) -> dict[str, Any]:
    return {"what": what, "status": "ok", **figures}


def skipped(what: str, reason: str) -> dict[str, Any]:
    return {"what": what, "status": "skipped", "reason": reason}


def failed(what: str, error: BaseException) -> dict[str, Any]:
    return {"what": what, "status": "error", "reason": f"{type(error).__name__}: {error}"}


def needs_cuda(what: str, why: str) -> dict[str, Any]:
    return skipped(what, f"needs a CUDA device ({why})")


def is_oom(error: BaseException) -> bool:
    """Whether an exception means "does not fit in GPU memory"."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error) for m in OOM_MARKERS))


# ----------------------------------------------------------------------------------------------- device helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    """Drop unreachable tensors and hand cached GPU blocks back (between parts and after an OOM)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def device_info(device: torch.device) -> dict[str, Any]:
    """Name, memory and software versions of the device the check runs on."""
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30,
                    multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
                    cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    tf32_conv=torch.backends.cudnn.allow_tf32)
    else:
        info["name"] = "cpu"
    return info


# ----------------------------------------------------------------------------------------------- training steps
def random_batch(cfg: Config, b: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A training batch (clipbert.data.batches keys) of random pixels and tokens at the config's shapes."""
    n, t, s = cfg.sampling.train_n_clips, cfg.sampling.frames_per_clip, cfg.model.img_size
    k, length = 1 + cfg.data.itm_neg_size, cfg.data.max_txt_len
    frames = torch.randint(0, 256, (b, n, t, 3, s, s), dtype=torch.uint8, device=device)  # (B, N, T, 3, S, S)
    ids = torch.randint(5, cfg.model.vocab_size, (b, k, length), device=device)  # (B, K, L)
    mask = torch.ones_like(ids)
    mask[..., 3 * length // 4:] = 0  # the last quarter is padding
    return {"frames": frames, "input_ids": ids, "attention_mask": mask,
            "label": torch.zeros(b, dtype=torch.long, device=device),
            "video_key": torch.arange(b, device=device)}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, batch: dict[str, torch.Tensor],
               precision: str, device: torch.device) -> None:
    """One optimiser step as clipbert/training/loop.py takes it: autocast forward + loss, backward, clipping, AdamW."""
    with autocast(device, precision):
        loss = batch_loss(model, cfg, batch)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the trainable ones
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    optimizer_step(optimizer, scaler, params, cfg, 1, 100)


def count_flops(step: Callable[[], None]) -> float:
    """Model FLOPs of one step (see FLOP_METHOD); the step also serves as a warm-up."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def timed_steps(step: Callable[[], None], most: int, deadline: float, device: torch.device) -> list[float]:
    """Seconds of up to `most` synchronised steps; stops early when the next one would pass the deadline."""
    times: list[float] = []
    for _ in range(most):
        if times and time.monotonic() + statistics.median(times) > deadline:
            break
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def step_figures(cfg: Config, b: int, times: list[float], flops: float, peak: float) -> dict[str, Any]:
    """Throughput and utilisation of a step of `flops` model FLOPs at batch `b` from its timed runs."""
    step_s = statistics.median(times)
    return {"B": b, "steps": len(times), "step_s": step_s, "samples_per_s": b / step_s,
            "clips_per_s": b * cfg.sampling.train_n_clips / step_s, "achieved_tflops": flops / step_s / 1e12,
            "mfu": flops / step_s / peak}


def time_variant(ctx: Context, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 batch: dict[str, torch.Tensor], precision: str, flops: float, deadline: float) -> dict[str, Any]:
    """One warm-up step (for a compiled model: the compilation), then timed steps; a row with the figures."""
    cfg, device = ctx.cfg, ctx.device
    b = batch["frames"].shape[0]
    try:
        reset_peak(device)
        start = time.perf_counter()
        train_step(model, optimizer, cfg, batch, precision, device)
        sync(device)
        warmup_s = time.perf_counter() - start
        times = timed_steps(lambda: train_step(model, optimizer, cfg, batch, precision, device),
                            ctx.sizes.timed_steps, deadline, device)
        return ok(f"step {name}", precision=precision, warmup_s=warmup_s, peak_gib=peak_gib(device),
                  **step_figures(cfg, b, times, flops, ctx.peak_flops))
    except Exception as e:  # an OOM or a compile failure ends this variant, not the part
        row = failed(f"step {name}", e)
    optimizer.zero_grad(set_to_none=True)
    release_memory(device)
    return row


def try_batch(ctx: Context, model: torch.nn.Module, optimizer: torch.optim.Optimizer, b: int) -> tuple[str, float]:
    """One bf16 step at batch b: ("ok", peak GiB), ("oom", 0) or (the error, 0) for another failure."""
    outcome, peak = "ok", 0.0
    try:
        reset_peak(ctx.device)
        train_step(model, optimizer, ctx.cfg, random_batch(ctx.cfg, b, ctx.device), "bf16", ctx.device)
        sync(ctx.device)
        peak = peak_gib(ctx.device) or 0.0
    except Exception as e:
        outcome = "oom" if is_oom(e) else f"{type(e).__name__}: {e}"
    optimizer.zero_grad(set_to_none=True)
    release_memory(ctx.device)  # outside the except block: the traceback no longer holds the activations
    return outcome, peak


def largest_batch(ctx: Context, model: torch.nn.Module, optimizer: torch.optim.Optimizer, b0: int, step_s: float,
                  deadline: float) -> dict[str, Any]:
    """Largest batch (videos) whose bf16 step fits: doubling from b0 until it fails, then bisecting to within 1/8.

    A trial whose expected time (3x the step time at b0, scaled by the batch) would pass the deadline ends the
    search with complete=False; largest_fit is then a lower bound.
    """
    fit, over, failure, peak, trial = 0, None, "", 0.0, b0

    def affordable(b: int) -> bool:
        return time.monotonic() + 3 * step_s * b / b0 + 1 < deadline

    while over is None and trial <= ctx.sizes.max_batch_cap:
        if not affordable(trial):
            return {"largest_fit": fit, "first_failure": over, "complete": False, "peak_gib_at_fit": peak}
        outcome, used = try_batch(ctx, model, optimizer, trial)
        if outcome == "ok":
            fit, peak, trial = trial, used, trial * 2
        else:
            over, failure = trial, "" if outcome == "oom" else outcome
    while over is not None and not failure and over - fit > max(1, fit // 8):
        mid = (fit + over) // 2
        if not affordable(mid):
            return {"largest_fit": fit, "first_failure": over, "complete": False, "peak_gib_at_fit": peak}
        outcome, used = try_batch(ctx, model, optimizer, mid)
        if outcome == "ok":
            fit, peak = mid, used
        else:
            over, failure = mid, "" if outcome == "oom" else outcome
    return {"largest_fit": fit, "first_failure": over, "complete": True, "peak_gib_at_fit": peak,
            "cap": ctx.sizes.max_batch_cap, **({"failure": failure} if failure else {})}


def set_channels_last(model: torch.nn.Module, enabled: bool) -> None:
    """ResNet weights (and so its activations: cuDNN follows the weights) in NHWC or back in NCHW."""
    model.cnn.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)


def remember_fastest_bf16(ctx: Context, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Keep the fastest successful bf16 step row in ctx.step (the data path's demand) and return it."""
    steps = [r for r in rows if r["status"] == "ok" and r.get("precision") == "bf16" and "step_s" in r]
    if not steps:
        return None
    best = min(steps, key=lambda r: r["step_s"])
    ctx.step = {k: best[k] for k in ("B", "step_s", "samples_per_s")} | {"variant": best["what"]}
    return best


def part_train_step(ctx: Context, rows: list[dict[str, Any]], deadline: float) -> None:
    """Full-size training step: fp32, bf16, channels_last, torch.compile; MFU, peak memory, largest batches."""
    cfg, device = ctx.cfg, ctx.device
    ctx.peak_flops = model_bench.matmul_peak(device, "bf16", ctx.sizes.peak_seconds)
    rows.append(ok("matmul peak", dtype="bf16" if ctx.cuda else "fp32 (CPU)", tflops=ctx.peak_flops / 1e12))
    torch.manual_seed(0)
    model = build_model(cfg.model)[0].to(device).train()
    optimizer = build_optimizer(model, cfg.optim)
    batch = random_batch(cfg, cfg.optim.batch_size, device)
    flops = count_flops(lambda: train_step(model, optimizer, cfg, batch, "bf16", device))
    rows.append(ok("model FLOPs per step", B=cfg.optim.batch_size, gflops=flops / 1e9, method=FLOP_METHOD))
    for name, precision, channels_last in (("fp32", "fp32", False), ("bf16", "bf16", False),
                                           ("bf16 channels_last", "bf16", True)):
        if time.monotonic() > deadline:
            rows.append(skipped(f"step {name}", "out of time (raise --minutes)"))
            continue
        set_channels_last(model, channels_last)
        rows.append(time_variant(ctx, name, model, optimizer, batch, precision, flops, deadline))
    best = remember_fastest_bf16(ctx, rows)
    channels_last = best is not None and "channels_last" in best["what"]  # where it helps
    set_channels_last(model, channels_last)
    rows.append(memory_row(ctx, rows))
    for checkpointing in (False, True):
        rows.append(largest_batch_row(ctx, model, optimizer, checkpointing, deadline))
    rows.append(compile_row(ctx, model, optimizer, batch, flops, channels_last, deadline))
    remember_fastest_bf16(ctx, rows)


def memory_row(ctx: Context, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not ctx.cuda:
        return needs_cuda("peak GPU memory per step variant (GiB)", "torch.cuda.max_memory_allocated")
    return ok("peak GPU memory per step variant (GiB)",
              **{r["what"].removeprefix("step ").replace(" ", "_"): r["peak_gib"] for r in rows
                 if r["status"] == "ok" and r.get("peak_gib") is not None})


def largest_batch_row(ctx: Context, model: torch.nn.Module, optimizer: torch.optim.Optimizer, checkpointing: bool,
                      deadline: float) -> dict[str, Any]:
    what = f"largest batch, bf16{', gradient checkpointing' if checkpointing else ''}"
    if not ctx.cuda:
        return needs_cuda(what, "the search grows the batch until torch.cuda.OutOfMemoryError")
    if ctx.step is None:
        return skipped(what, "no bf16 step was measured")
    model.set_gradient_checkpointing(checkpointing)
    try:
        return ok(what, B_start=ctx.step["B"], **largest_batch(ctx, model, optimizer, ctx.step["B"],
                                                                ctx.step["step_s"], deadline))
    finally:
        model.set_gradient_checkpointing(False)


def compile_row(ctx: Context, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                batch: dict[str, torch.Tensor], flops: float, channels_last: bool, deadline: float) -> dict[str, Any]:
    """bf16 steps of torch.compile(model) in the faster memory format; warmup_s holds the compilation."""
    what = f"step bf16 torch.compile{' channels_last' if channels_last else ''}"
    if ctx.smoke:
        return skipped(what, "--smoke: compiling the model's forward and backward takes minutes")
    if deadline - time.monotonic() < COMPILE_RESERVE_S:
        return skipped(what, f"out of time: compiling needs ~{COMPILE_RESERVE_S:.0f} s (raise --minutes)")
    compiled = torch.compile(model)
    row = time_variant(ctx, what.removeprefix("step "), compiled, optimizer, batch, "bf16", flops, deadline)
    del compiled
    torch._dynamo.reset()
    release_memory(ctx.device)
    return row


# ----------------------------------------------------------------------------------------------- batched vs loop
def part_batched_vs_loop(ctx: Context, rows: list[dict[str, Any]], deadline: float) -> None:
    """bench/model.py's measure: the same step with all B x N clips in one pass and with one pass per clip."""
    b = ctx.step["B"] if ctx.step else ctx.cfg.optim.batch_size
    peak = ctx.peak_flops or model_bench.matmul_peak(ctx.device, "bf16", ctx.sizes.peak_seconds)
    precision = "bf16" if ctx.cuda else "fp32"
    measured = model_bench.measure(ctx.sizes.preset, ctx.cfg.model, b, ctx.cfg.data.max_txt_len,
                                   ctx.sizes.loop_steps, ctx.device, precision, peak)
    keys = ("B", "N", "T", "K", "img", "precision", "steps", "step_s", "clips_per_s", "gflops_per_step", "mfu")
    for r in measured:
        rows.append(ok(r["mode"], **{k: r[k] for k in keys}))
    by_mode = {r["mode"]: r for r in measured}
    rows.append(ok("batched / per-clip loop", clips_per_s_ratio=by_mode["batched"]["clips_per_s"]
                   / by_mode["per-clip loop"]["clips_per_s"]))


# ----------------------------------------------------------------------------------------------- synthetic corpus
def texture_frames(rng: np.random.Generator, width: int, height: int, count: int) -> np.ndarray:
    """uint8 (count, H, W, 3): a blocky random texture drifting 2 pixels per frame plus mild noise."""
    low = rng.integers(0, 256, (height // 8 + 1, width // 8 + 2, 3)).astype(np.int16)
    base = np.repeat(np.repeat(low, 8, axis=0), 8, axis=1)  # (H', W', 3), 8x8 blocks
    noise = rng.integers(-6, 7, (4, height, width, 3), dtype=np.int16)  # (4, H, W, 3), cycled
    frames = [np.roll(base, 2 * i, axis=1)[:height, :width] + noise[i % 4] for i in range(count)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)  # (count, H, W, 3)


def write_frame_store(root: Path, sizes: Sizes, rng: np.random.Generator) -> list[str]:
    """A one-shard frame store of random-texture videos written in this process with clipbert.data.frames; their ids."""
    from clipbert.data import frames as fs

    options = fs.StoreOptions(max_fps=sizes.store_fps, max_side=max(sizes.store_size))
    (w, h), fps, ids = sizes.store_size, sizes.store_fps, [f"video{i:05d}" for i in range(sizes.store_videos)]

    def videos():
        for video_id in ids:
            frames = texture_frames(rng, w, h, sizes.store_frames)  # (F, H, W, 3)
            jpegs = [fs.encode_jpeg(f, options.jpeg_quality) for f in frames]
            yield fs.ok_row(video_id, f"synthetic/{video_id}", jpegs, fps=fps, width=w, height=h, src_fps=fps,
                            src_width=w, src_height=h, src_frames=len(jpegs)), jpegs

    fs.write_store(root, options, videos())
    return ids


def write_captions(path: Path, video_ids: list[str], count: int, rng: np.random.Generator) -> None:
    """`count` msrvtt_ret annotation lines cycling over the videos, each a random 6-14 word caption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        words = rng.choice(CAPTION_WORDS, size=int(rng.integers(6, 15)))
        lines.append(json.dumps({"clip_name": video_ids[i % len(video_ids)], "caption": " ".join(words)}))
    path.write_text("\n".join(lines) + "\n")


def ensure_store(ctx: Context) -> Path:
    """The synthetic corpus (made once): frames/, tokenizer/, txt/train.jsonl (4 captions per video), txt/val.jsonl."""
    if ctx.store is None:
        from clipbert.data.text import write_vocab

        start = time.perf_counter()
        root, rng = ctx.workdir / "corpus", np.random.default_rng(0)
        ids = write_frame_store(root / "frames", ctx.sizes, rng)
        write_vocab(CAPTION_WORDS, root / "tokenizer")
        write_captions(root / "txt" / "train.jsonl", ids, 4 * len(ids), rng)
        write_captions(root / "txt" / "val.jsonl", ids[:ctx.sizes.val_videos], ctx.sizes.val_videos, rng)
        ctx.store = root
        print(f"synthesized {len(ids)} videos x {ctx.sizes.store_frames} frames in {time.perf_counter() - start:.1f} s",
              flush=True)
    return ctx.store


def corpus_config(ctx: Context, *extra: str) -> Config:
    """The training config on the synthetic corpus."""
    root = ensure_store(ctx)
    paths = [f"data.root={root}", "data.frame_store=frames", "data.tokenizer=tokenizer",
             "data.train_file=txt/train.jsonl", "data.val_file=txt/val.jsonl"]
    return load_config(ctx.sizes.preset, [*ctx.sizes.overrides, *paths, *extra])


def store_jpeg_bytes(root: Path) -> float:
    """Mean stored JPEG bytes per frame."""
    from clipbert.data import frames as fs

    manifest = fs.read_manifest(root).to_pydict()
    return sum(manifest["bytes"]) / max(1, sum(manifest["num_frames"]))


# ----------------------------------------------------------------------------------------------- Ray
def ensure_ray(ctx: Context) -> None:
    """The cluster at --address, else a local Ray on this machine's CPUs (2 with --smoke) and GPUs, its State API
    pinned to its own dashboard."""
    if ctx.ray_started:
        return
    import ray

    from clipbert.ray_init import init_ray

    start = time.perf_counter()
    if ctx.address:
        init_ray(ctx.address, progress_bars=False)
    else:
        start_local_ray(2 if ctx.smoke else None)
    ctx.ray_started = True
    print(f"ray.init in {time.perf_counter() - start:.1f} s: {ray.cluster_resources()}", flush=True)


# ----------------------------------------------------------------------------------------------- data path
def annotation_rows(cfg: Config, count: int) -> tuple[list[dict[str, Any]], tuple[np.ndarray, np.ndarray]]:
    """`count` training rows (repeating the file's) as build_trainer feeds them, and the negative caption pool."""
    from clipbert.training.run import prepare_task

    train = prepare_task(cfg).train
    rows = [{k: r[k] for k in ("example_id", "video_id", "texts", "label")} for r in train]
    rows = [dict(rows[i % len(rows)], example_id=i) for i in range(count)]
    negatives = (np.array([r["video_id"] for r in train]), np.array([r["texts"][0] for r in train]))
    return rows, negatives


def clip_stage(cfg: Config, max_batches: int, deadline: float, device: torch.device) -> dict[str, Any]:
    """Batches/s of make_batch as a Ray Data pipeline (1 CPU per task, one task per batch, every CPU of the local
    Ray), delivered to `device` by iter_torch_batches as training workers receive them; sustained = after the first."""
    import ray

    from clipbert.data.batches import make_batch
    from clipbert.config import config_to_dict

    b = cfg.optim.batch_size
    rows, negatives = annotation_rows(cfg, b * max_batches)
    ds = ray.data.from_items(rows, override_num_blocks=max_batches)
    ds = ds.map_batches(make_batch, batch_size=b, num_cpus=1,
                        fn_kwargs={"cfg": config_to_dict(cfg), "train": True, "negatives": negatives})
    start, stamps, shape = time.perf_counter(), [], ()
    for batch in ds.iter_torch_batches(batch_size=b, drop_last=True, device=device.type):
        stamps.append(time.perf_counter())
        shape = tuple(batch["frames"].shape)  # (B, N, T, 3, S, S)
        if time.monotonic() > deadline and len(stamps) >= MIN_STAGE_BATCHES:
            break
    if len(stamps) < 2:
        raise RuntimeError(f"the clip stage delivered {len(stamps)} batch(es); a rate needs 2")
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])  # batches/s
    frames = math.prod(shape[:3])  # B * N * T decoded frames per batch
    return {"B": b, "shape": "x".join(map(str, shape)), "batches": len(stamps), "first_batch_s": stamps[0] - start,
            "batches_per_s": rate, "videos_per_s": rate * b, "frames_per_s": rate * frames,
            "cpus": ray.cluster_resources().get("CPU", 0.0)}


def demand_row(ctx: Context, stage: dict[str, Any]) -> dict[str, Any]:
    what = "clip stage supply / training step demand"
    if ctx.step is None or ctx.step["B"] != stage["B"]:
        return skipped(what, "part train_step measured no bf16 step at this batch size")
    demand = 1.0 / ctx.step["step_s"]  # batches/s the fastest bf16 step consumes
    return ok(what, step=ctx.step["variant"], gpu_batches_per_s=demand, stage_batches_per_s=stage["batches_per_s"],
              supply_over_demand=stage["batches_per_s"] / demand)


def run_windows(ctx: Context, deadline: float) -> int:
    """Optimiser steps per evaluation window of the short run, sized from the measured step time and the deadline."""
    low, high = ctx.sizes.run_window_steps
    step_s = ctx.step["step_s"] if ctx.step else None
    if step_s is None or ctx.smoke:
        return low
    return int(min(high, max(low, (deadline - time.monotonic() - TRAIN_RUN_FIXED_S) / (2.6 * step_s))))


def short_train_run(ctx: Context, cfg: Config, deadline: float) -> dict[str, Any]:
    """A real Ray Train fit (TorchTrainer, 1 worker, its GPU) of one epoch cut into two evaluation windows: the first
    holds the pipeline's start-up, the second is steady; data_wait_fraction and samples/s of each."""
    from clipbert.training.run import build_trainer, prepare_task

    what = f"Ray Train run, 1 worker{' + 1 GPU' if ctx.cuda else ' (CPU)'}"
    if not ctx.smoke and deadline - time.monotonic() < TRAIN_RUN_FIXED_S + 10:
        return skipped(what, "out of time (raise --minutes)")
    window = run_windows(ctx, deadline)
    b = cfg.optim.batch_size
    write_captions(ctx.store / "txt" / "run_train.jsonl", video_ids(ctx), 2 * window * b, np.random.default_rng(1))
    run = copy.deepcopy(cfg)
    run.data.train_file = str(ctx.store / "txt" / "run_train.jsonl")
    run.train.use_gpu, run.train.num_workers, run.train.keep_checkpoints = ctx.cuda, 1, 2
    run.train.eval_every_steps, run.train.log_every_steps, run.optim.num_epochs = window, window, 1.0
    start = time.perf_counter()
    result = build_trainer(run, prepare_task(run), storage_path=str(ctx.workdir / "ray_train"), name="run").fit()
    wall = time.perf_counter() - start
    if result.error:
        raise result.error
    first, steady = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["step"])
    return ok(what, B=b, steps=steady["step"], fit_wall_s=wall,
              data_wait_first=first["data_wait_fraction"], data_wait_steady=steady["data_wait_fraction"],
              samples_per_s_first=first["train_samples_per_s"], samples_per_s_steady=steady["train_samples_per_s"],
              eval_s=steady["eval_s"])


def video_ids(ctx: Context) -> list[str]:
    from clipbert.data.frames import FrameStore

    return FrameStore(ctx.store / "frames").ids()


def part_data_path(ctx: Context, rows: list[dict[str, Any]], deadline: float) -> None:
    """Clip stage supply against the step's demand, and the data-wait fraction of a short Ray Train run."""
    cfg = corpus_config(ctx)
    rows.append(ok("synthetic frame store", videos=ctx.sizes.store_videos, frames_per_video=ctx.sizes.store_frames,
                   stored_size="x".join(map(str, ctx.sizes.store_size)),
                   jpeg_bytes_per_frame=store_jpeg_bytes(ctx.store / "frames")))
    ensure_ray(ctx)
    stage_deadline = time.monotonic() + 0.3 * (deadline - time.monotonic())
    try:
        stage = clip_stage(cfg, ctx.sizes.stage_batches, stage_deadline, ctx.device)
        rows += [ok("Ray Data clip stage (make_batch)", **stage), demand_row(ctx, stage)]
    except Exception as e:
        traceback.print_exc()
        rows.append(failed("Ray Data clip stage (make_batch)", e))
    release_memory(ctx.device)
    rows.append(short_train_run(ctx, cfg, deadline))


# ----------------------------------------------------------------------------------------------- embedding
def random_clips(b: int, n: int, cfg: Config, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A load_clips-style batch of b videos x N random clips: {"video_id", "frames" (b, N, T, 3, S, S), "error"}."""
    s = cfg.model.img_size
    frames = rng.integers(0, 256, (b, n, cfg.sampling.frames_per_clip, 3, s, s), dtype=np.uint8)
    return {"video_id": np.array([f"v{i}" for i in range(b)]), "frames": frames,
            "error": np.array([""] * b, dtype=object)}


def embedder_rate(ctx: Context, checkpoint: Path, cfg: Config, deadline: float) -> dict[str, Any]:
    """Clips/s of the Embedder actor's __call__ (host frames -> device, encode_grid, projections, back to host)."""
    from pipelines.embed import Embedder

    embedder = Embedder(str(checkpoint), use_gpu=ctx.cuda)
    b, n = ctx.sizes.embed_batch, ctx.sizes.embed_clips
    batch = random_clips(b, n, cfg, np.random.default_rng(0))
    embedder(batch)  # warm-up; every call ends with the embeddings on the host, so it is synchronised
    times = timed_steps(lambda: embedder(batch), ctx.sizes.embed_calls, deadline, ctx.device)
    call_s = statistics.median(times)
    return ok("Embedder (model stage)", precision=embedder.precision, videos_per_call=b, clips_per_video=n,
              calls=len(times), call_s=call_s, clips_per_s=b * n / call_s)


def embed_job_rate(ctx: Context, checkpoint: Path, deadline: float) -> dict[str, Any]:
    """run_embed over the synthetic store on the local Ray: the whole job, actor start-up included."""
    from pipelines.embed import run_embed

    what = f"run_embed job (Ray Data, {'1 GPU actor' if ctx.cuda else 'CPU actors'})"
    if ctx.smoke and not ctx.cuda:
        return skipped(what, "--smoke on a CPU: the job's CPU path is tested by tests/test_embed.py; its GPU path runs "
                             "in --smoke on a GPU")
    if not ctx.smoke and deadline - time.monotonic() < EMBED_JOB_MIN_S:
        return skipped(what, "out of time (raise --minutes)")
    ensure_ray(ctx)
    summary = run_embed(str(checkpoint), str(ctx.store / "frames"), str(ctx.workdir / "embeddings"),
                        n_clips=ctx.sizes.embed_clips, use_gpu=ctx.cuda, batch_size=ctx.sizes.embed_batch)
    if summary.videos_failed:
        raise RuntimeError(f"{summary.videos_failed} videos failed: {summary.failures[:3]}")
    return ok(what, videos=summary.videos_ok, clips=summary.clips, seconds=summary.seconds,
              clips_per_s=summary.clips / summary.seconds)


def part_embed(ctx: Context, rows: list[dict[str, Any]], deadline: float) -> None:
    """The index job's model stage alone, then the whole embedding job."""
    cfg = corpus_config(ctx, "model.contrastive=True")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_model(cfg.model)[0], cfg, ctx.workdir / "embed_checkpoint")
    half = time.monotonic() + 0.5 * (deadline - time.monotonic())
    rows.append(embedder_rate(ctx, checkpoint, cfg, half))
    release_memory(ctx.device)
    rows.append(embed_job_rate(ctx, checkpoint, deadline))


# ----------------------------------------------------------------------------------------------- faiss
def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """float32 (n, dim) random unit vectors (build and search times hardly depend on the distribution)."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def faiss_gpu_problem() -> str | None:
    """Why faiss cannot use a GPU here, or None when it can."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return ("faiss-gpu is not installed (this faiss has no StandardGpuResources); nothing was installed: "
                "pip uninstall -y faiss-cpu && pip install faiss-gpu==1.15.1")
    if faiss.get_num_gpus() < 1:
        return "faiss-gpu sees no GPU"
    return None


def faiss_row(factory: str, on_gpu: bool, base: np.ndarray, queries: np.ndarray, nprobe: int,
              truth: np.ndarray | None, resources: list) -> tuple[dict[str, Any], np.ndarray]:
    """Build (build_index: train + add, back on the host) and search one index; (row, top-10 ids)."""
    import faiss

    from clipbert.retrieval.index_build import build_index
    from clipbert.retrieval.index_tuning import RECALL_K, recall_of

    start = time.perf_counter()
    index = build_index(base, factory, use_gpu=on_gpu)
    build_s, to_gpu_s = time.perf_counter() - start, 0.0
    if on_gpu:
        if not resources:
            resources.append(faiss.StandardGpuResources())  # one per process, reused by the next GPU row
        start = time.perf_counter()
        index = faiss.index_cpu_to_gpu(resources[0], 0, index)
        to_gpu_s = time.perf_counter() - start
    if "IVF" in factory:
        space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
        space.set_index_parameter(index, "nprobe", nprobe)
    index.search(queries[:16], RECALL_K)  # warm-up
    start = time.perf_counter()
    found = index.search(queries, RECALL_K)[1]  # (Q, 10)
    search_s = time.perf_counter() - start
    row = ok(f"{factory} on {'GPU' if on_gpu else 'CPU'}", build_s=build_s, search_s=search_s,
             qps=len(queries) / search_s, **({"to_gpu_s": to_gpu_s} if on_gpu else {}),
             **({"nprobe": nprobe} if "IVF" in factory else {}),
             **({"recall_at_10": recall_of(found, truth)} if truth is not None else {}))
    return row, found


def part_faiss(ctx: Context, rows: list[dict[str, Any]], deadline: float) -> None:
    """Flat and IVF-Flat over random unit vectors, faiss-cpu then faiss-gpu, recall against the exact CPU search."""
    import faiss

    from clipbert.retrieval.index_choice import ivf_lists
    from clipbert.retrieval.index_tuning import RECALL_K

    s = ctx.sizes
    start = time.perf_counter()
    base, queries = unit_vectors(s.faiss_vectors, s.faiss_dim, 0), unit_vectors(s.faiss_queries, s.faiss_dim, 1)
    rows.append(ok("vectors (isotropic random: IVF's worst case for recall)", n=s.faiss_vectors, dim=s.faiss_dim,
                   queries=s.faiss_queries, k=RECALL_K, generate_s=time.perf_counter() - start,
                   faiss=faiss.__version__, cpu_threads=faiss.omp_get_max_threads()))
    problem, truth, resources = faiss_gpu_problem(), None, []
    for factory in ("Flat", f"IVF{ivf_lists(s.faiss_vectors)},Flat"):
        for on_gpu in (False, True):
            what = f"{factory} on {'GPU' if on_gpu else 'CPU'}"
            if on_gpu and problem:
                rows.append(skipped(what, problem))
            elif time.monotonic() > deadline:
                rows.append(skipped(what, "out of time (raise --minutes)"))
            else:
                row, found = faiss_row(factory, on_gpu, base, queries, s.nprobe, truth, resources)
                rows.append(row)
                truth = found if truth is None else truth  # the first row is the exact CPU search


# ----------------------------------------------------------------------------------------------- driver
PARTS: dict[str, tuple[Callable[[Context, list, float], None], str]] = {
    "train_step": (part_train_step, "full-size training step on one device"),
    "batched_vs_loop": (part_batched_vs_loop, "B x N clips in one pass vs the per-clip loop"),
    "data_path": (part_data_path, "Ray Data clip stage vs the step's demand; data wait of a Ray Train run"),
    "embed": (part_embed, "embedding: model stage and run_embed job"),
    "faiss": (part_faiss, "faiss build + search, CPU and GPU"),
}


def figures_text(row: dict[str, Any]) -> str:
    """A row's figures as "key=value, ..." (or its reason)."""
    if row["status"] != "ok":
        return row.get("reason", "")
    out = []
    for key, value in row.items():
        if key in ("what", "status", "method") or isinstance(value, (list, dict)) or value is None:
            continue
        out.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(out)


def run_part(name: str, ctx: Context, deadline: float) -> dict[str, Any]:
    """Run one part until its deadline; its rows survive an error, which is printed and recorded."""
    fn, title = PARTS[name]
    budget = deadline - time.monotonic()
    print(f"\n=== {name}: {title} (budget {budget:.0f} s)", flush=True)
    if budget < MIN_PART_S and not ctx.smoke:
        return {"title": title, "status": "skipped", "seconds": 0.0, "budget_s": budget, "rows": [],
                "error": "out of time (raise --minutes)"}
    rows: list[dict[str, Any]] = []
    status, error, start = "ok", None, time.perf_counter()
    try:
        fn(ctx, rows, deadline)
    except Exception as e:
        traceback.print_exc()
        status, error = "error", f"{type(e).__name__}: {e}"
    release_memory(ctx.device)
    seconds = time.perf_counter() - start
    print_table(f"{name}: {status} in {seconds:.1f} s" + (f" ({error})" if error else ""),
                ["what", "status", "figures"], [[r["what"], r["status"], figures_text(r)] for r in rows])
    return {"title": title, "status": status, "seconds": seconds, "budget_s": budget, "error": error, "rows": rows}


def run_all(ctx: Context, minutes: float, output: str, header: dict[str, Any]) -> dict[str, Any]:
    """Every part in turn, each given its weight's share of the time left; the JSON is rewritten after each."""
    end = time.monotonic() + 60 * minutes
    parts: dict[str, Any] = {}
    names = list(PARTS)
    for i, name in enumerate(names):
        share = max(0.0, end - time.monotonic()) * PART_WEIGHTS[name] / sum(PART_WEIGHTS[n] for n in names[i:])
        parts[name] = run_part(name, ctx, time.monotonic() + share)
        write_json(output, "gpu", {**header, "parts": parts})
    return parts


@contextlib.contextmanager
def scratch(workdir: str | None) -> Iterator[Path]:
    """--workdir, or a temporary directory removed at the end."""
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        yield Path(workdir).resolve()
    else:
        with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
            yield Path(tmp)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=8.0, help="time budget of all parts together")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (on the CPU when there is no GPU): a quick check")
    p.add_argument("--output", default="bench_results", help="directory for gpu.json")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--address", default=None, help="a Ray cluster to join (default: start a local Ray)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.smoke:
        sys.exit("bench/gpu.py: no CUDA device; the full-size check needs one (use --smoke for the tiny CPU check)")
    sizes = SMOKE if args.smoke else FULL
    if args.smoke and device.type == "cpu":
        torch.set_num_threads(1)  # tiny models on a shared CPU: one thread avoids oversubscription stalls
    cfg = load_config(sizes.preset, list(sizes.overrides))
    header = {"device": device_info(device), "smoke": args.smoke, "minutes": args.minutes,
              "sizes": dataclasses.asdict(sizes), "part_weights": PART_WEIGHTS}
    print(f"bench/gpu.py on {header['device']['name']}, {'smoke' if args.smoke else 'full'} sizes, "
          f"budget {args.minutes:g} min", flush=True)
    start = time.perf_counter()
    with scratch(args.workdir) as workdir:
        ctx = Context(device, sizes, workdir, args.smoke, cfg, address=args.address)
        try:
            parts = run_all(ctx, args.minutes, args.output, header)
        finally:
            if ctx.ray_started:
                import ray

                ray.shutdown()
    payload = {**header, "total_s": time.perf_counter() - start, "parts": parts}
    print_table(f"bench/gpu.py on {header['device']['name']}: {payload['total_s']:.0f} s in all",
                ["part", "status", "seconds", "rows ok", "rows skipped", "rows failed", "error"],
                [[n, p["status"], p["seconds"], *(sum(r["status"] == s for r in p["rows"])
                                                  for s in ("ok", "skipped", "error")), p["error"] or ""]
                 for n, p in parts.items()])
    write_json(args.output, "gpu", payload)
    return payload


if __name__ == "__main__":
    main()
