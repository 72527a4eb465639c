"""A tour of the whole system on data it makes itself, with the recommended label-free recipe: synthesize videos
and captioned stills -> preprocess (Ray Data) -> pretrain the CNN on the stills' captions -> finetune (Ray Train)
-> build the index (Ray Data + FAISS) -> held-out search evaluation, two-stage -> example queries -> contact sheet.

Usage:
    python jobs/demo.py --workdir demo_run            # what `make demo` runs (under 10 minutes on 2 idle cores)
    python jobs/demo.py --workdir demo_run --videos 600 --epochs 80 --pretrain-minutes 2 --rerank 16

The video corpus is split into train / val / test videos. The CNN learns from captioned stills of a seed of their
own, captions only (jobs/pretrain_cnn.py --objective captions); the model is finetuned on the train captions
(preset synthetic_recipe) and picked on val, and the index and every figure printed here are over the test videos,
which neither step sees. Search recalls candidates with the dual encoder and re-ranks the top --rerank with the
ClipBERT cross-encoder. Each step is skipped when its output already exists (delete WORKDIR to start over); the
step timings are printed at the end, with the command that serves the index over HTTP (jobs/serve.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for jobs.build_index

from clipbert.logs import setup_logging  # noqa: E402

if TYPE_CHECKING:
    from clipbert.retrieval.search import Searcher

logger = logging.getLogger("demo")
ATTRIBUTES = ("color", "shape", "direction")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("demo_run"))
    p.add_argument("--videos", type=int, default=400, help="videos in the synthetic corpus")
    p.add_argument("--val-videos", type=int, default=50, help="of which validation (picks the checkpoint)")
    p.add_argument("--test-videos", type=int, default=100, help="of which test (the index's gallery)")
    p.add_argument("--max-duration", type=float, default=8.0, help="longest video, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stills", type=int, default=6400, help="captioned stills the CNN pretrains on")
    p.add_argument("--pretrain-minutes", type=float, default=1.5, help="CNN pretraining wall time")
    p.add_argument("--epochs", type=float, default=120, help="finetuning epochs")
    p.add_argument("--k", type=int, default=5, help="hits printed per example query")
    p.add_argument("--rerank", type=int, default=8, help="cross-encoder re-rank depth (evaluation and examples)")
    p.add_argument("--address", default=None, help="Ray address to join (default: RAY_ADDRESS, else a new local Ray)")
    return p.parse_args(argv)


class Steps:
    """Runs the tour's steps in order, timing each (a step whose output exists is skipped and says so)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    def run(self, name: str, done: bool, fn: Callable[[], Any]) -> Any:
        n = len(self.seconds) + 1
        print(f"\n== {n}. {name}{' (done before: skipped)' if done else ''}", flush=True)
        t0 = time.perf_counter()
        out = None if done else fn()
        self.seconds[name] = time.perf_counter() - t0
        return out

    def table(self) -> None:
        print("\nstep timings:")
        for name, s in self.seconds.items():
            print(f"  {name:<34} {s:7.1f} s")
        print(f"  {'total (wall clock)':<34} {time.perf_counter() - self.start:7.1f} s")


def attribute_agreement(query: dict, other: dict) -> int:
    """How many of a video's event attributes (2 events x colour, shape, direction) another video shares, in order."""
    return sum(a[key] == b[key] for a, b in zip(query["events"], other["events"]) for key in ATTRIBUTES)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    import ray

    from clipbert.ray_init import init_ray
    from clipbert.training.caption_cnn import pretrain_cnn_on_captions
    from clipbert.config import load_config
    from clipbert.data.frames import StoreOptions
    from clipbert.synthetic.corpus import synthesize_corpus
    from clipbert.synthetic.stills import synthesize_images
    from clipbert.training.run import keep_idle_workers, run_training
    from jobs.build_index import main as build_index
    from pipelines.preprocess import run_preprocess

    work = args.workdir.resolve()
    corpus, stills, cnn = work / "corpus", work / "stills", work / "caption_cnn"
    runs, index = work / "runs", work / "index"
    steps = Steps()
    steps.run("synthesize videos", (corpus / "corpus.json").exists(), lambda: synthesize_corpus(
        corpus, n_videos=args.videos, seed=args.seed, val_videos=args.val_videos, test_videos=args.test_videos,
        max_duration=args.max_duration, sizes=[(160, 120), (120, 160), (160, 160)], workers=2, overwrite=True))
    steps.run("synthesize captioned stills", (stills / "images.json").exists(), lambda: synthesize_images(
        stills, n_images=args.stills, val_images=min(100, args.stills // 4), seed=args.seed + 1000, overwrite=True))
    keep_idle_workers()  # data workers survive between epochs of the local Ray started below
    outputs = (corpus / "frames" / "manifest.parquet", stills / "frames" / "manifest.parquet",
               runs / "demo" / "final_metrics.json", index / "index.json")
    steps.run("start Ray", all(p.exists() for p in outputs),
              lambda: init_ray(args.address, progress_bars=False))
    for name, root in (("videos", corpus), ("stills", stills)):
        summary = steps.run(f"preprocess the {name} (Ray Data)", (root / "frames" / "manifest.parquet").exists(),
                            lambda root=root: run_preprocess(str(root / ("videos" if root is corpus else "images")),
                                                             str(root / "frames"), StoreOptions(max_side=160)))
        if summary:
            print("\n".join(summary.lines()))
    cnn_cfg = load_config("synthetic_tiny_pretrain", [f"data.root={stills}"])
    pretrained = steps.run("pretrain the CNN on captions", (cnn / "pretrain_metrics.json").exists(),
                           lambda: pretrain_cnn_on_captions(cnn_cfg, cnn, minutes=args.pretrain_minutes))
    if pretrained:
        before, after = pretrained["held_out_before"], pretrained["held_out_after"]
        print(f"CNN pretrained for {pretrained['steps']} steps on the stills' caption words: held-out word recall "
              f"{before['word_recall']:.1f}% -> {after['word_recall']:.1f}%")
    cfg = load_config("synthetic_recipe", [f"data.root={corpus}", f"model.init_checkpoint={cnn}",
                                           f"optim.num_epochs={args.epochs}", "train.num_workers=1",
                                           "train.eval_every_steps=200", "data.test_file=''"])
    steps.run("finetune (Ray Train)", outputs[2].exists(),
              lambda: run_training(cfg, storage_path=str(runs), name="demo"))
    checkpoint = runs / "demo" / "best"
    steps.run("build the index (Ray Data)", outputs[3].exists(), lambda: _check(build_index([
        "--checkpoint", str(checkpoint), "--frame-store", str(corpus / "frames"), "--output", str(index),
        "--videos", str(corpus / "txt" / "retrieval_test.jsonl")])))
    ray.shutdown()
    searcher = steps.run("load the searcher", False, lambda: _searcher(index))
    steps.run("held-out evaluation", False, lambda: _evaluate(searcher, corpus, args.rerank))
    steps.run("example queries", False, lambda: _examples(searcher, corpus, work, args))
    steps.table()
    print(f"\nserve it:  python jobs/serve.py --index {index} --rerank {args.rerank}\n"
          f"then open http://127.0.0.1:8000/ or curl 'http://127.0.0.1:8000/search?q=a+red+circle+moves+left&k=5'")
    return 0


def _check(rc: int) -> None:
    if rc != 0:
        raise SystemExit(f"jobs/build_index.py failed (exit {rc})")


def _searcher(index: Path) -> Searcher:
    from clipbert.retrieval.search import Searcher

    return Searcher(index)


def _evaluate(searcher: Searcher, corpus: Path, rerank: int) -> None:
    """Held-out text-to-video retrieval over the test gallery: dual encoder and two-stage, with chance beside."""
    from clipbert.retrieval.search_eval import evaluate_search

    rows = evaluate_search(searcher, corpus / "txt" / "retrieval_test.jsonl", depths=(rerank,) if rerank else (),
                           all_pairs=False)
    n = searcher.gallery_size
    print(f"held-out text-to-video retrieval, {n} test videos and their captions (percent; chance R@1 "
          f"{100 / n:.1f}, R@5 {500 / n:.1f}, R@10 {1000 / n:.1f}, median rank {(n + 1) / 2:.0f}):")
    for r in rows:
        if r["method"] in ("dual (video)", "two-stage"):
            name = r["method"] + (f", re-rank top {r['rerank']}" if r["rerank"] else "")
            print(f"  {name:<26} R@1 {r['t2v_r1']:5.1f}  R@5 {r['t2v_r5']:5.1f}  R@10 {r['t2v_r10']:5.1f}  "
                  f"median rank {r['t2v_medr']:g}")
    print(f"(two-stage: the dual encoder's top {rerank} re-ranked by ITM margin + {searcher.fuse_weight:g} x dual "
          "score, the weight chosen on validation)" if rerank else "(--rerank 0: the dual encoder alone)")


def _examples(searcher: Searcher, corpus: Path, work: Path, args: argparse.Namespace) -> None:
    """Three test captions as queries: top-k hits with scores, each hit's caption and the attributes it shares."""
    from clipbert.retrieval.results_page import contact_sheet

    videos = {v["video_id"]: v for v in json.loads((corpus / "corpus.json").read_text())["videos"]}
    gallery = searcher.index.video_ids
    picks = [gallery[i * len(gallery) // 3] for i in range(3)]
    queries = [videos[v]["caption"] for v in picks]
    results = searcher.search(queries, k=args.k, rerank=args.rerank)
    for video_id, query, hits in zip(picks, queries, results):
        chance = sum(attribute_agreement(videos[video_id], videos[g]) for g in gallery) / len(gallery)
        shared = [attribute_agreement(videos[video_id], videos[h.video_id]) for h in hits]
        print(f"\n\"{query}\"  (the caption of test video {video_id})")
        for h, n in zip(hits, shared):
            cross = f"{h.rerank_score:+.2f}" if h.rerank_score is not None else "-"
            mark = "  <- the captioned video" if h.video_id == video_id else ""
            print(f"  {h.rank}. {h.video_id}  dual {h.dual_score:+.3f}  re-rank {cross}  shares {n}/6  "
                  f"\"{videos[h.video_id]['caption']}\"{mark}")
        print(f"  top {len(hits)} share {sum(shared) / len(shared):.1f} of 6 event attributes with the query's video "
              f"on average (a random test video: {chance:.1f})")
    sheet = work / "contact_sheet.html"
    sheet.write_text(contact_sheet(searcher, queries, results, note=f"index {work / 'index'}"))
    print(f"\ncontact sheet (frames inlined, open it in a browser): {sheet}")


if __name__ == "__main__":
    sys.exit(main())
