"""Benchmark: two-stage search (FAISS recall, cross-encoder re-rank) against the all-pairs cross-encoder.

Prepares, each step cached under ``--workdir``: a synthetic corpus (``--splits`` TRAIN,VAL,TEST videos; the
TEST split is the held-out gallery, never trained or chosen on) and the recommended label-free recipe: a CNN
pretrained on the caption words of captioned stills of another seed (captions only), then a model finetuned by
``jobs/train.py`` (the ``synthetic_recipe`` preset, its full schedule; the checkpoint and the re-rank score's ITC
weight are picked on the VAL split). Then builds the index with ``jobs/build_index.py`` over
the test videos and runs ``jobs/search.py --eval`` on the test captions: dual encoder (video and clips
granularity), two-stage at every rerank depth (by the re-rank score), and the original's all-pairs cross-encoder
(by the ITM margin alone and by the re-rank score).

Usage:
    python bench/search.py --output bench_results                      # 400 / 100 / 1,000 videos, about an hour
    python bench/search.py --output bench_results --prepare-only       # corpus, pretraining and training only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(REPO))

from common import print_table, write_json  # noqa: E402
from learn import prepare_corpus, prepare_images  # noqa: E402

PRESET = "synthetic_recipe"
DEPTHS = (4, 8, 16, 32, 64, 128)


def _run(cmd: list[str], log: Path) -> None:
    """Run a job script to completion, its output in `log`; raise naming the log when it fails."""
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    print(f"$ {' '.join(cmd[1:])}\n  log: {log}", flush=True)
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    if rc != 0:
        raise SystemExit(f"{cmd[1]} failed (exit {rc}); see {log}")


def pretrained_cnn(workdir: Path, args: argparse.Namespace) -> Path:
    """The CNN pretrained on the caption words of stills of another seed for a fixed wall time (cached)."""
    from clipbert.training.caption_cnn import pretrain_cnn_on_captions
    from clipbert.config import load_config

    stills = prepare_images(workdir, args.stills, 100, args.pretrain_seed, args.max_side)
    out = workdir / f"caption_cnn_s{args.pretrain_seed}_{args.pretrain_minutes:g}min"
    if not (out / "pretrain_metrics.json").exists():
        print(f"pretraining the CNN on the captions of {stills} for {args.pretrain_minutes:g} min ...", flush=True)
        pretrain_cnn_on_captions(load_config("synthetic_tiny_pretrain", [f"data.root={stills}"]), out,
                                 minutes=args.pretrain_minutes)
    return out


def trained_model(workdir: Path, root: Path, cnn: Path, args: argparse.Namespace) -> Path:
    """Finetune with jobs/train.py for the preset's whole schedule (cached); returns the exported best checkpoint."""
    storage, name = workdir / "runs", "search_model"
    best = storage / name / "best"
    if not (storage / name / "final_metrics.json").exists():
        sets = [f"data.root={root}", f"model.init_checkpoint={cnn}", "train.eval_every_steps=250"]
        _run([sys.executable, str(REPO / "jobs" / "train.py"), "--config", PRESET, "--num-workers", "1",
              "--storage-path", str(storage), "--name", name, *[a for s in sets for a in ("--set", s)]],
             Path(args.output) / "search_train.log")
    return best


def build_index(workdir: Path, root: Path, checkpoint: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """jobs/build_index.py over the TEST videos (embeddings cached, the index rebuilt); returns (dir, seconds)."""
    out = workdir / "index_test"
    t0 = time.time()
    _run([sys.executable, str(REPO / "jobs" / "build_index.py"), "--checkpoint", str(checkpoint),
          "--frame-store", str(root / "frames"), "--output", str(out), "--granularity", args.granularity,
          "--videos", str(root / "txt" / "retrieval_test.jsonl")], Path(args.output) / "search_build_index.log")
    return out, time.time() - t0


def evaluate(index: Path, root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """jobs/search.py --eval on the TEST captions; the rows it wrote."""
    out = Path(args.output) / "search_eval_rows.json"
    _run([sys.executable, str(REPO / "jobs" / "search.py"), "--index", str(index), "--eval",
          str(root / "txt" / "retrieval_test.jsonl"), "--depths", ",".join(map(str, DEPTHS)), "--json", str(out)],
         Path(args.output) / "search_eval.log")
    return json.loads(out.read_text())


def verdict(rows: list[dict[str, Any]], keep: float, gain: float, max_depth: int) -> dict[str, Any]:
    """The shallowest two-stage depth (<= max_depth) that keeps `keep` of the all-pairs R@1 (re-rank score) and beats
    the dual encoder's R@1 by `gain` points; met when there is one."""
    full = next(r for r in rows if r["method"] == "all-pairs re-rank score")
    dual = next(r for r in rows if r["method"] == "dual (video)")
    good = [r for r in rows if r["method"] == "two-stage" and r["rerank"] <= max_depth
            and r["t2v_r1"] >= keep * full["t2v_r1"] and r["t2v_r1"] >= dual["t2v_r1"] + gain]
    best = min(good, key=lambda r: r["rerank"]) if good else None
    return {"all_pairs_r1": full["t2v_r1"], "dual_r1": dual["t2v_r1"], "depth": best["rerank"] if best else None,
            "r1": best["t2v_r1"] if best else None, "met": best is not None}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="bench_results", help="where search.json and the logs go")
    p.add_argument("--workdir", default="bench_work/search", help="corpora, model and index (reused between runs)")
    p.add_argument("--splits", default="400,100,1000", help="TRAIN,VAL,TEST videos; TEST is the gallery")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--max-side", type=int, default=160, help="longer side of the stored frames")
    p.add_argument("--pretrain-seed", type=int, default=1000, help="seed of the captioned stills")
    p.add_argument("--stills", type=int, default=6400, help="captioned stills the CNN pretrains on")
    p.add_argument("--pretrain-minutes", type=float, default=2.5, help="caption-word CNN pretraining wall time")
    p.add_argument("--granularity", choices=("video", "clips"), default="video", help="index granularity")
    p.add_argument("--prepare-only", action="store_true", help="stop after training the model")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    workdir = Path(args.workdir).resolve()
    Path(args.output).mkdir(parents=True, exist_ok=True)
    splits = tuple(int(v) for v in args.splits.split(","))
    t0 = time.time()
    root = prepare_corpus(workdir, splits, args.seed, args.max_side)
    cnn = pretrained_cnn(workdir, args)
    checkpoint = trained_model(workdir, root, cnn, args)
    print(f"model ready in {time.time() - t0:.0f} s: {checkpoint}", flush=True)
    if args.prepare_only:
        return None
    index, build_s = build_index(workdir, root, checkpoint, args)
    rows = evaluate(index, root, args)
    print_table(f"Held-out text-to-video retrieval, {splits[2]:,} test videos and their captions (percent)",
                ["method", "rerank", "R@1", "R@5", "R@10", "MdR", "cross passes", "seconds"],
                [[r["method"], r["rerank"] or "-", r["t2v_r1"], r["t2v_r5"], r["t2v_r10"], r["t2v_medr"],
                  r["cross_passes"], r["seconds"]] for r in rows])
    result = verdict(rows, keep=0.98, gain=5.0, max_depth=32)
    print(f"\ndual R@1 {result['dual_r1']:.1f}, all-pairs re-rank R@1 {result['all_pairs_r1']:.1f}; shallowest depth "
          f"<= 32 beating the dual encoder by >= 5 points and keeping >= 98% of all pairs: {result['depth']} "
          f"(R@1 {result['r1']}); target {'met' if result['met'] else 'NOT met'}")
    train = json.loads((checkpoint.parent / "final_metrics.json").read_text())
    payload = {"corpus": str(root), "splits": splits, "checkpoint": str(checkpoint), "train_final": train,
               "index": json.loads((index / "index.json").read_text()), "build_index_s": build_s,
               "rows": rows, "verdict": result, "load_avg": os.getloadavg()}
    write_json(args.output, "search", payload)
    return payload


if __name__ == "__main__":
    main()
