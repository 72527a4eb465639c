"""Benchmark: does the tiny preset learn from pixels within a wall-time budget, and sparse against dense training.

Synthesizes (once) a two-event moving-shape corpus with held-out validation videos, preprocesses it into a
frame store, then runs ``jobs/train.py`` in a subprocess for each mode under a wall-time budget:

- sparse: ``synthetic_tiny`` (N = 2 random clips of T = 2 frames per video per step, one per half of the video);
- dense:  ``synthetic_tiny_dense`` (ONE clip made of every stored frame of the video, uniformly spaced);
- pretrained: ``synthetic_tiny`` finetuned from a pretrained CNN (``model.init_checkpoint``), as ClipBERT
  finetunes from an ImageNet-pretrained ResNet. The CNN is trained first by ``clipbert.cnn_pretrain`` on a corpus
  synthesized with another seed (``--pretrain-seed``; none of its videos is in the retrieval splits), and
  that pretraining counts in the mode's wall time and budget.

While a run trains, the validation curve is read from its TensorBoard events (every evaluation writes
``val/*`` scalars with the step and a wall-clock stamp): held-out text-to-video R@1 of the cross-encoder
(``t2v_r1``) and of the dual encoder (``itc_t2v_r1``) over the validation gallery, and 5-way multiple-choice
accuracy scored with the ITM head (``mc_acc``). Metrics are in percent. Wall time counts from the launch of
``jobs/train.py`` (Ray start-up, evaluations and checkpoints included). Prints the curves and a sparse-vs-dense
table, writes OUT/learn.json and OUT/learn.png. The machine's load average is recorded: the figures are only
comparable between runs on an otherwise idle machine.

Usage:
    python bench/learn.py --output bench_results                                # all three modes, 20 min each
    python bench/learn.py --output bench_results --modes sparse --stop-at-target  # stop once the targets are met
    python bench/learn.py --output bench_results --modes pretrained              # pretrain the CNN, then sparse
    python bench/learn.py --output bench_results --workdir /tmp/learn --budget-min 10 --set optim.lr=5e-4
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(REPO))

from common import print_table, write_json  # noqa: E402

from clipbert.config import load_config  # noqa: E402

MODES = {"sparse": "synthetic_tiny", "dense": "synthetic_tiny_dense", "pretrained": "synthetic_tiny"}  # -> preset
CURVE_KEYS = ("t2v_r1", "t2v_r5", "t2v_medr", "itc_t2v_r1", "itc_t2v_r5", "mc_acc", "epoch", "eval_s")
TARGETS = {"t2v_r1": 50.0, "mc_acc": 80.0}  # percent: R@1 >= 0.5 over 100 videos, MC accuracy >= 0.8
POLL_S = 5.0


# ------------------------------------------------------------------------------------------------ corpus
def prepare_corpus(workdir: Path, splits: tuple[int, int, int], seed: int, max_side: int) -> Path:
    """Synthesize, write the tokenizer and preprocess (each step skipped when already done); returns the root."""
    from clipbert.synthetic import synthesize_corpus
    from clipbert.text import write_vocab

    root = workdir / f"corpus_{'_'.join(map(str, splits))}_s{seed}"
    if not (root / "corpus.json").exists():
        print(f"synthesizing {sum(splits)} videos into {root} ...", flush=True)
        synthesize_corpus(root, n_videos=sum(splits), seed=seed, val_videos=splits[1], test_videos=splits[2],
                          workers=2, overwrite=True)
    if not (root / "tokenizer").exists():
        write_vocab((root / "txt" / "vocab_words.txt").read_text().split(), str(root / "tokenizer"))
    if not (root / "frames" / "manifest.parquet").exists():
        print(f"preprocessing into {root / 'frames'} ...", flush=True)
        subprocess.run([sys.executable, str(REPO / "jobs" / "preprocess.py"), "--videos", str(root / "videos"),
                        "--output", str(root / "frames"), "--max-side", str(max_side)], check=True, cwd=REPO)
    return root


def max_stored_frames(frame_store: Path) -> int:
    """The longest video of the store, in stored frames (the dense clip length that keeps every frame)."""
    import pyarrow.parquet as pq

    table = pq.read_table(frame_store / "manifest.parquet", columns=["num_frames", "status"]).to_pydict()
    return max(n for n, s in zip(table["num_frames"], table["status"]) if s == "ok")


# ------------------------------------------------------------------------------------------------ curve
def _records(path: Path) -> Iterator[bytes]:
    """Payloads of a TFRecord file (length u64, crc u32, data, crc u32); a torn last record is skipped."""
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 8], "little")
        end = pos + 12 + length + 4
        if end > len(data):
            return
        yield data[pos + 12:pos + 12 + length]
        pos = end


def read_scalars(tb_dir: Path) -> list[tuple[float, int, str, float]]:
    """(wall time, step, tag, value) of every scalar in the run's TensorBoard event files."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(tb_dir.glob("events.out.tfevents.*")) if tb_dir.is_dir() else []:
        for payload in _records(path):
            event = Event.FromString(payload)
            for value in event.summary.value:
                out.append((event.wall_time, int(event.step), value.tag, float(value.simple_value)))
    return out


def curve_from_scalars(scalars: list[tuple[float, int, str, float]], t0: float) -> list[dict[str, float]]:
    """One point per evaluation: step, wall_s (seconds since launch) and the val/* metrics."""
    points: dict[int, dict[str, float]] = {}
    for wall, step, tag, value in scalars:
        if tag.startswith("val/") and tag != "val/step":
            p = points.setdefault(step, {"step": step, "wall_s": wall - t0})
            p["wall_s"] = max(p["wall_s"], wall - t0)
            p[tag[4:]] = value
    return [points[s] for s in sorted(points)]


def train_rate(scalars: list[tuple[float, int, str, float]]) -> dict[str, float]:
    """Median training samples/s and data-wait fraction over the logged windows (the first one, start-up, and
    windows that include an evaluation are dropped by taking the median)."""
    import statistics

    rates = [v for _, _, tag, v in scalars if tag == "train/samples_per_s"][1:]
    waits = [v for _, _, tag, v in scalars if tag == "train/data_wait_fraction"][1:]
    return {"samples_per_s": statistics.median(rates) if rates else float("nan"),
            "data_wait_fraction": statistics.median(waits) if waits else float("nan")}


def meets_targets(point: dict[str, float]) -> bool:
    return all(point.get(k, float("-inf")) >= v for k, v in TARGETS.items())


# ------------------------------------------------------------------------------------------------ one run
def _stop(proc: subprocess.Popen) -> None:
    """Interrupt the training job (Ray shuts down on SIGINT), then kill its process group if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def pretrained_cnn(workdir: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Synthesize the pretraining corpus (its own seed) and pretrain the CNN on it, both cached (the CNN by its
    model config)."""
    from clipbert.cnn_pretrain import pretrain_cnn

    if args.pretrain_seed == args.seed:
        raise SystemExit("--pretrain-seed must differ from --seed: the pretraining videos must not be retrieval ones")
    splits = tuple(int(v) for v in args.pretrain_splits.split(","))
    root = prepare_corpus(workdir, splits, args.pretrain_seed, args.max_side)
    model_cfg = load_config(MODES["pretrained"], args.set).model  # the model the mode trains, --set included
    key = hashlib.blake2b(json.dumps(dataclasses.asdict(model_cfg), sort_keys=True).encode(), digest_size=4).hexdigest()
    out = workdir / f"cnn_{root.name}_{args.pretrain_min:g}min_{key}"
    if not (out / "pretrain_metrics.json").exists():
        print(f"pretraining the CNN on {root} for {args.pretrain_min:g} min ...", flush=True)
        pretrain_cnn(model_cfg, root, root / "frames", out, minutes=args.pretrain_min)
    metrics = json.loads((out / "pretrain_metrics.json").read_text())
    print(f"pretrained CNN {out}: {metrics['steps']} steps in {metrics['seconds']:.0f} s, held-out accuracy "
          f"{metrics['accuracy_after']}", flush=True)
    return out, metrics


def run_mode(mode: str, preset: str, root: Path, args: argparse.Namespace, extra: list[str],
             offset_s: float = 0.0) -> dict[str, Any]:
    """Train one mode under the budget; returns its curve, the reason it stopped and the summary figures.

    ``offset_s`` (seconds already spent on this mode, e.g. pretraining) is added to its wall times and budget."""
    storage = Path(args.workdir) / "runs"
    name = f"learn_{mode}"
    shutil.rmtree(storage / name, ignore_errors=True)
    sets = [f"data.root={root}", f"train.eval_every_steps={args.eval_every}", *extra, *args.set]
    cmd = [sys.executable, str(REPO / "jobs" / "train.py"), "--config", preset, "--num-workers", str(args.num_workers),
           "--storage-path", str(storage), "--name", name] + [a for s in sets for a in ("--set", s)]
    log_path = Path(args.output) / f"learn_{mode}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n[{mode}] {' '.join(cmd[1:])}\n[{mode}] log: {log_path}", flush=True)
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    budget_s = 60.0 * args.budget_min
    loads, reason, hit, shown = [], "finished", None, 0
    t0 = time.time() - offset_s
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        try:
            while proc.poll() is None:
                time.sleep(POLL_S)
                loads.append(os.getloadavg()[0])
                curve = curve_from_scalars(read_scalars(storage / name / "tensorboard"), t0)
                for p in curve[shown:]:
                    print(f"[{mode}] {_fmt_point(p)}", flush=True)
                shown = len(curve)
                if hit is None:
                    hit = next((p for p in curve if meets_targets(p)), None)
                if hit is not None and args.stop_at_target:
                    reason = "target"
                    break
                if time.time() - t0 > budget_s:
                    reason = "budget"
                    break
        finally:
            _stop(proc)
    wall = time.time() - t0
    scalars = read_scalars(storage / name / "tensorboard")
    curve = curve_from_scalars(scalars, t0)
    for p in curve[shown:]:
        print(f"[{mode}] {_fmt_point(p)}", flush=True)
    hit = next((p for p in curve if meets_targets(p)), None)
    if reason == "finished" and proc.returncode != 0:
        reason = f"failed (exit {proc.returncode}; see {log_path})"
    return {"mode": mode, "preset": preset, "command": " ".join(cmd[1:]), "stopped": reason, "wall_s": wall,
            "curve": curve, "best": _best(curve), "final": curve[-1] if curve else {},
            "time_to_target_s": hit["wall_s"] if hit else None, "step_at_target": hit["step"] if hit else None,
            **train_rate(scalars),
            "load_avg": {"mean": sum(loads) / len(loads) if loads else None, "max": max(loads, default=None)}}


def _best(curve: list[dict[str, float]]) -> dict[str, float]:
    return {k: max((p[k] for p in curve if k in p), default=float("nan")) for k in ("t2v_r1", "itc_t2v_r1", "mc_acc")}


def _fmt_point(p: dict[str, float]) -> str:
    parts = [f"{p['wall_s'] / 60:5.1f} min", f"step {p['step']:5d}"]
    parts += [f"{k} {p[k]:.0f}" for k in ("t2v_r1", "itc_t2v_r1", "mc_acc") if k in p]
    return "  ".join(parts)


# ------------------------------------------------------------------------------------------------ output
def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Metric against wall time, one line style per mode, the targets dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
    for ax, key, title in zip(axes, ("t2v_r1", "mc_acc", "itc_t2v_r1"),
                              ("text-to-video R@1, cross-encoder (%)", "multiple choice accuracy (%)",
                               "text-to-video R@1, dual encoder (%)")):
        for r, style in zip(results, ("-o", "--s", ":^")):
            pts = [p for p in r["curve"] if key in p]
            ax.plot([p["wall_s"] / 60 for p in pts], [p[key] for p in pts], style, label=r["mode"], markersize=3)
        if key in TARGETS:
            ax.axhline(TARGETS[key], color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("wall time since launch (min)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_results(results: list[dict[str, Any]]) -> None:
    for r in results:
        print_table(f"{r['mode']} ({r['preset']}): validation curve", ["min", "step", "epoch", "t2v_r1", "t2v_r5",
                    "itc_t2v_r1", "mc_acc", "eval_s"],
                    [[p["wall_s"] / 60, p["step"], p.get("epoch", 0), p.get("t2v_r1"), p.get("t2v_r5"),
                      p.get("itc_t2v_r1"), p.get("mc_acc"), p.get("eval_s")] for p in r["curve"]])
    print_table("less is more: sparse against dense training (validation, percent; best over the run)",
                ["mode", "t2v_r1", "mc_acc", "itc_t2v_r1", "final t2v_r1", "final mc_acc", "min to target",
                 "samples/s", "data wait", "steps", "wall min", "stopped", "load avg"],
                [[r["mode"], r["best"]["t2v_r1"], r["best"]["mc_acc"], r["best"]["itc_t2v_r1"],
                  r["final"].get("t2v_r1"), r["final"].get("mc_acc"),
                  r["time_to_target_s"] / 60 if r["time_to_target_s"] else "not reached", r["samples_per_s"],
                  r["data_wait_fraction"], r["final"].get("step"), r["wall_s"] / 60, r["stopped"],
                  r["load_avg"]["mean"]] for r in results])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="bench_results", help="where learn.json, learn.png and the logs go")
    p.add_argument("--workdir", default="bench_work/learn", help="corpus and run storage (reused between runs)")
    p.add_argument("--splits", default="400,100,100", help="TRAIN,VAL,TEST videos of the synthetic corpus")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--max-side", type=int, default=160, help="longer side of the stored frames")
    p.add_argument("--modes", default="sparse,dense,pretrained", help="comma-separated, from: " + ", ".join(MODES))
    p.add_argument("--budget-min", type=float, default=20.0, help="wall-time budget per mode (minutes)")
    p.add_argument("--stop-at-target", action="store_true", help="stop a mode once t2v_r1 and mc_acc reach the targets")
    p.add_argument("--num-workers", type=int, default=1,
                   help="Ray Train workers (on 2 cores one worker, batch 16 per step, learns faster per minute than two)")
    p.add_argument("--eval-every", type=int, default=250, help="optimiser steps between evaluations (sparse mode)")
    p.add_argument("--pretrain-seed", type=int, default=1, help="seed of the pretraining corpus (pretrained mode)")
    p.add_argument("--pretrain-splits", default="400,50,0", help="TRAIN,VAL,TEST videos of the pretraining corpus")
    p.add_argument("--pretrain-min", type=float, default=2.0, help="minutes of CNN pretraining (pretrained mode)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every mode")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    splits = tuple(int(v) for v in args.splits.split(","))
    workdir = Path(args.workdir).resolve()
    root = prepare_corpus(workdir, splits, args.seed, args.max_side)
    dense_frames = max_stored_frames(root / "frames")
    load_before = os.getloadavg()
    results, pretrain = [], None
    for mode in modes:
        extra, offset_s = [], 0.0
        if mode == "pretrained":
            cnn_dir, pretrain = pretrained_cnn(workdir, args)
            extra, offset_s = [f"model.init_checkpoint={cnn_dir}"], pretrain["seconds"]
        if mode == "dense":  # evaluate after the same number of decoded frames as the sparse mode, not steps
            sparse = load_config(MODES["sparse"]).sampling
            every = max(1, round(args.eval_every * sparse.train_n_clips * sparse.num_frames / dense_frames))
            extra = [f"sampling.dense_num_frames={dense_frames}", f"train.eval_every_steps={every}",
                     f"train.log_every_steps={max(1, every // 5)}"]
        results.append(run_mode(mode, MODES[mode], root, args, extra, offset_s))
    print_results(results)
    out = Path(args.output)
    plot(results, out / "learn.png")
    payload = {"corpus": str(root), "splits": splits, "targets": TARGETS, "budget_min": args.budget_min,
               "num_workers": args.num_workers, "dense_num_frames": dense_frames, "load_avg_before": load_before,
               "pretrain": pretrain, "results": results}
    write_json(out, "learn", payload)
    print(f"wrote {out / 'learn.png'}")
    return payload


if __name__ == "__main__":
    main()
