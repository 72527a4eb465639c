"""Benchmark: ClipBERT training-step throughput, all clips batched in one pass against the original's per-clip loop.

A training step is forward + backward + AdamW step on one retrieval batch (K = 2 texts per video: the
positive and one negative, ITM loss with LSE consensus), random weights, random pixels and tokens:
- batched: ``ClipBert.forward`` runs the CNN on all B*N*T frames and BERT on all B*K*N sequences at once;
- per-clip: the original's loop (run_video_retrieval.py): the full model once per clip on (B, 1, T) frames,
  logits stacked over clips, one backward.
Figures: median step time, clips per second (B*N / step time), model FLOPs per step counted with
torch.utils.flop_counter, achieved FLOP/s and the model FLOPs utilisation against a measured matmul peak
(fp32 on CPU, bf16 on CUDA). Models: the full-size one (ResNet-50 at 448 px, BERT-base, N=8, T=2, B=1)
and the tiny preset (N=8, T=2, B=4).

On CPU the per-step FLOPs are identical in both modes; batching pays off where per-operator overhead
dominates (small models, GPUs with kernel-launch latency). For the full-size model on a CPU, the 16 frames
of 448 px in one pass are less cache-friendly than 2 at a time, so the per-clip loop can be as fast or faster.
With more than one CPU thread on a busy machine, thread synchronisation makes the many small operators of
the per-clip loop erratic: hence one thread by default.

Usage:
    python bench/model.py --output bench_results                 # CPU: tiny + full size, ~5 min, 1 thread
    python bench/model.py --skip-full --output bench_results     # CPU: tiny preset only, ~1 min
    python bench/model.py --device cuda --batch-full 8 --steps 10 --output bench_results   # GPU, bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, write_json  # noqa: E402

from clipbert.config import ModelConfig, OptimConfig, load_config  # noqa: E402
from clipbert.model.clipbert import ClipBert  # noqa: E402
from clipbert.model.losses import itm_loss  # noqa: E402
from clipbert.model.optim import build_optimizer  # noqa: E402

N_CLIPS, T, K = 8, 2, 2


def make_batch(b: int, n: int, t: int, cfg: ModelConfig, length: int, device: torch.device) -> tuple:
    """Random uint8 frames (B, N, T, 3, S, S) and (B, K, L) tokens with the last quarter padded."""
    frames = torch.randint(0, 256, (b, n, t, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8, device=device)
    ids = torch.randint(1000 % cfg.vocab_size, cfg.vocab_size, (b, K, length), device=device)
    mask = torch.ones(b, K, length, dtype=torch.long, device=device)
    mask[..., 3 * length // 4:] = 0
    return frames, ids, mask


def batched_logits(model: ClipBert, frames: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(frames, ids, mask)  # (B, K, N, 2)


def per_clip_logits(model: ClipBert, frames: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The original's loop: CNN + BERT once per clip, logits stacked over clips."""
    return torch.cat([model(frames[:, i:i + 1], ids, mask) for i in range(frames.shape[1])], dim=2)  # (B, K, N, 2)


def train_step(model: ClipBert, opt: torch.optim.Optimizer, logits_fn: Callable, batch: tuple,
               precision: str) -> None:
    """One optimiser step: forward (under autocast unless fp32), ITM loss, backward, AdamW."""
    device_type = batch[0].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = itm_loss(logits_fn(model, *batch), None, "lse")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def counted_step(model: ClipBert, opt: torch.optim.Optimizer, logits_fn: Callable, batch: tuple,
                 precision: str) -> float:
    """An untimed warm-up step that also counts the model FLOPs of its forward + backward (matmuls, convs)."""
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, opt, logits_fn, batch, precision)
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device, precision: str, seconds: float = 2.0) -> float:
    """Measured dense matmul FLOP/s (fp32 on CPU, bf16/fp32 on CUDA) as the utilisation denominator."""
    n = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" and device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
        _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def measure(name: str, cfg: ModelConfig, b: int, length: int, steps: int, device: torch.device,
            precision: str, peak: float) -> list[dict[str, Any]]:
    """Time the batched and per-clip training steps of one model; returns one row per mode.

    After one counted warm-up step per mode, timed steps alternate between the modes (A B A B ...) so
    that a load change on a shared machine hits both alike.
    """
    torch.manual_seed(0)
    model = ClipBert(cfg).to(device).train()
    opt = build_optimizer(model, OptimConfig())
    batch = make_batch(b, N_CLIPS, T, cfg, length, device)
    modes = {"batched": batched_logits, "per-clip loop": per_clip_logits}
    flops = {mode: counted_step(model, opt, fn, batch, precision) for mode, fn in modes.items()}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(steps):
        for mode, fn in modes.items():
            _sync(device)
            start = time.perf_counter()
            train_step(model, opt, fn, batch, precision)
            _sync(device)
            times[mode].append(time.perf_counter() - start)
    rows = []
    for mode in modes:
        step_s = statistics.median(times[mode])
        rows.append({"model": name, "mode": mode, "B": b, "N": N_CLIPS, "T": T, "K": K, "L": length,
                     "img": cfg.img_size, "precision": precision, "steps": steps, "step_s": step_s,
                     "step_times_s": times[mode], "clips_per_s": b * N_CLIPS / step_s,
                     "gflops_per_step": flops[mode] / 1e9, "achieved_tflops": flops[mode] / step_s / 1e12,
                     "mfu": flops[mode] / step_s / peak})
        print(f"{name:5s} {mode:14s} {step_s:8.3f} s/step  {b * N_CLIPS / step_s:8.2f} clips/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="bench_results", help="directory for model.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, default=1, help="timed full-size steps per mode (after 1 warm-up)")
    parser.add_argument("--steps-tiny", type=int, default=10, help="timed tiny steps per mode (after 1 warm-up)")
    parser.add_argument("--batch-full", type=int, default=1, help="videos per step, full-size model")
    parser.add_argument("--batch-tiny", type=int, default=4, help="videos per step, tiny preset")
    parser.add_argument("--skip-full", action="store_true", help="only the tiny preset (quick check)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 keeps figures stable on a shared machine (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    peak = matmul_peak(device, precision)
    print(f"device {device} ({torch.get_num_threads()} threads), {precision}, matmul peak {peak / 1e12:.3f} TFLOP/s, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    tiny = load_config("tiny_ret")
    rows += measure("tiny", tiny.model, args.batch_tiny, tiny.data.max_txt_len, args.steps_tiny, device,
                    precision, peak)
    if not args.skip_full:
        full = load_config("msrvtt_ret")
        rows += measure("full", full.model, args.batch_full, full.data.max_txt_len, args.steps, device, precision,
                        peak)
    ratios = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        by_mode = {r["mode"]: r for r in rows if r["model"] == name}
        ratios[name] = by_mode["batched"]["clips_per_s"] / by_mode["per-clip loop"]["clips_per_s"]
    columns = ["model", "mode", "B", "N", "T", "img", "step_s", "clips_per_s", "gflops_per_step",
               "achieved_tflops", "mfu"]
    print_table(f"ClipBERT training step on {device} ({precision}); batched / per-clip clips/s: "
                + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()), columns,
                [[r[c] for c in columns] for r in rows])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    payload = {"device": device_name, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "load_average_at_end": os.getloadavg(),
               "precision": precision, "matmul_peak_tflops": peak / 1e12, "rows": rows,
               "batched_over_per_clip": ratios}
    write_json(args.output, "model", payload)
    return payload


if __name__ == "__main__":
    main()
