"""Benchmark: memory over time while preprocessing K videos and training on them (K = 500 and 2,000): peak memory
of the driver and of the largest Ray process of each kind, and whether it grows during a phase.

One run makes (or reuses) a corpus of --videos short synthetic videos under --workdir (160x120 H.264, 2-4 s at
10 fps: cheap to make and decode, so that 2,000 of them take minutes), V = --val-videos of them in the val split and
the rest in the train split. For each size K of --sizes, smallest first, on a fresh local Ray, two phases run:
- preprocess: ``pipelines.preprocess.run_preprocess`` of K videos (the first K - V of the train split and the V of
  the val split) into a fresh frame store;
- train: --epochs epochs of --config (synthetic_tiny, --workers Ray Train workers) on those videos' captions
  (retrieval_train, retrieval_val and mc_val restricted to them) through ``clipbert.training.run.build_trainer`` as
  jobs/train.py builds it, with a validation on the V val videos at the end of each epoch. V is the same at every
  size: the validation scores all caption-video pairs, whose count grows with V squared, which is not measured here.
  One epoch of 2,000 videos lasts about 30 s on 2 cores, as long as the start-up of Ray Train and its workers
  (imports, model, first batches), so the default is 5 epochs: the 25% point of the phase then lies past the
  start-up, and growth compares early and late training, over the data pipeline's restart at every epoch.

A thread of this process samples every --interval seconds the memory of this process (the driver, which also runs
Ray Data's executor) and of every process this Ray started (its descendants: another Ray on the machine is not
counted), grouped by what they ran (their process titles over the phase): "train workers" (ray::RayTrainWorker),
"data tasks" (workers that ran a Ray Data read/map/shuffle/write task, even if idle at other times), "other ray::"
(Ray Train's controller, Ray Data's coordinator and stats actors, workers only ever idle) and "ray system" (raylet,
GCS, dashboard, their agents). For each phase and group the table shows the number of processes, the peak RSS,
anonymous RSS and USS of the group's largest process, the group's largest RSS at the samples at 25/50/75/100% of the
phase's wall time, and growth = value at 100% - value at 25%, of the RSS and of the anonymous RSS. Memory is in MiB:
- RSS counts every resident page, shared ones too: libraries, the pages of Ray's shared-memory object store and of
  the frame store's memory-mapped LMDB files that the process has touched (reclaimable; they grow as it reads more);
- anonymous RSS (RSS - psutil's ``shared``, i.e. RssAnon of /proc/PID/status) leaves out every file-backed and
  shared-memory page: the heap, where a leak would show;
- USS (psutil's ``memory_full_info``, from /proc/PID/smaps_rollup) counts the pages no other process maps; it costs
  milliseconds per process, so it is read at every --uss-every-th sample only (and at the end), the others at every one.
One sample takes a few tens of milliseconds of the driver's time (``sample_s`` in the JSON). The sizes run in one
driver process, so its figures at a larger size include what it imported at a smaller one; each size starts with a
fresh Ray, hence fresh worker processes.

Usage:
    python bench/memory.py --workdir bench_work/memory --output bench_results   # sizes 500 and 2,000: 5 min, 2 cores
    python bench/memory.py --videos 200 --sizes 100,200 --epochs 2 --workdir /tmp/mem --output /tmp/mem
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import threading
import time
from array import array
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, start_local_ray, write_json  # noqa: E402

from clipbert.config import Config, load_config  # noqa: E402
from clipbert.logs import setup_logging  # noqa: E402

MEASURES = ("rss", "anon", "uss")  # resident set; its anonymous part (RssAnon); unique set (private pages)
GROUPS = ("driver", "train workers", "data tasks", "other ray::", "ray system")
QUARTERS = (25, 50, 75, 100)  # % of a phase's wall time at which RSS and anonymous RSS are shown
TINY_VIDEOS = {"min_duration": 2.0, "max_duration": 4.0, "sizes": [(160, 120)], "fps_choices": [10]}
ANNOTATIONS = ("retrieval_train", "retrieval_val", "mc_val")  # txt/NAME.jsonl restricted to the chosen videos
SYSTEM_ACTORS = ("DashboardAgent", "RuntimeEnvAgent")  # ray:: processes of every node, like the raylet
MIB = 2**20
SERIES_POINTS = 120  # at most this many points per group's time series in the JSON (maxima over equal spans)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="directory for memory.json")
    p.add_argument("--workdir", type=Path, default=Path("bench_work") / "memory", help="corpus, frame stores, runs")
    p.add_argument("--videos", type=int, default=2000, help="videos in the synthetic corpus")
    p.add_argument("--sizes", default="500,2000", help="comma-separated videos per load (each <= --videos)")
    p.add_argument("--val-videos", type=int, default=32, help="val videos of the corpus, in every load")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="synthetic_tiny")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--epochs", type=int, default=5, help="training epochs per load (a validation after each)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples (RSS)")
    p.add_argument("--uss-every", type=int, default=10, help="read USS at every N-th sample (and the last)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ sampling
class Sampler:
    """Memory of this process and its descendants every ``interval`` seconds, in a thread, while a with-block runs.

    ``rows``: (seconds since the start, pid, *MEASURES in bytes) per process and sample; USS is read at every
    ``uss_every``-th sample and the last (it costs milliseconds per process, RSS microseconds), else it is None.
    ``titles``: the titles (first word of the command line) of each pid. ``seconds``: the block's wall time;
    ``sample_s``: the mean wall time of one sample. Samples are kept in flat arrays (40 bytes per process and sample),
    so that the sampler adds little to the driver's own growth.
    """

    def __init__(self, interval: float, uss_every: int):
        self.interval, self.uss_every, self._costs = interval, uss_every, array("d")
        self.titles: dict[int, set[str]] = defaultdict(set)
        self._columns = [array("d") for _ in range(2 + len(MEASURES))]  # seconds, pid, *MEASURES (USS -1: not read)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> "Sampler":
        self.start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self.start
        self.sample_s = sum(self._costs) / max(1, len(self._costs))

    @property
    def rows(self) -> list[tuple]:
        return [(t, int(pid), rss, anon, None if uss < 0 else uss) for t, pid, rss, anon, uss in zip(*self._columns)]

    def _run(self) -> None:
        for n in itertools.count():
            self._sample(n % self.uss_every == 0)
            if self._stop.wait(self.interval):
                self._sample(True)  # the state at the end of the block
                return

    def _sample(self, uss: bool) -> None:
        import psutil  # Ray ships it (ray/thirdparty_files, on sys.path once ray is imported)

        tick = time.perf_counter()
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                with proc.oneshot():
                    title = (" ".join(proc.cmdline()) or proc.name()).split()[0]
                    mem = proc.memory_full_info() if uss else proc.memory_info()
            except (psutil.Error, IndexError):  # exited meanwhile, or a zombie
                continue
            if mem.rss == 0:  # exiting: its memory already released (no live process has no resident page)
                continue
            self.titles[proc.pid].add(title)
            anon = mem.rss - mem.shared  # resident pages not backed by a file or shared memory
            for column, value in zip(self._columns, (tick - self.start, proc.pid, mem.rss, anon,
                                                     mem.uss if uss else -1)):
                column.append(value)
        self._costs.append(time.perf_counter() - tick)


def group_of(pid: int, titles: set[str], driver: int) -> str:
    """The group (one of GROUPS) of a process from every title (first word of its command line) it had in a phase."""
    if pid == driver:
        return "driver"
    ray = {t.removeprefix("ray::") for t in titles if t.startswith("ray::")}
    if not ray or any(t.startswith(SYSTEM_ACTORS) for t in ray):
        return "ray system"
    if any(t.startswith(("RayTrainWorker", "_RayTrainWorker")) for t in ray):
        return "train workers"
    if any(_is_data_task(t) for t in ray):
        return "data tasks"
    return "other ray::"


def _is_data_task(name: str) -> bool:
    """Whether a task name is Ray Data's: operators ("MapBatches(fn)", "ReadItems->Map(fn)", "Write"), shuffles
    ("map", "reduce", "merge")."""
    return "(" in name or "->" in name or name.startswith(("Read", "Write")) or name in ("map", "reduce", "merge")


def summarize(rows: list[tuple], titles: dict[int, set[str]], driver: int) -> dict[str, dict]:
    """Per group, from a Sampler's rows and titles: its processes; the peak RSS, anonymous RSS and USS of its largest
    process; its largest RSS and anonymous RSS at the samples at QUARTERS of the phase, and their growth (100% - 25%);
    the time series [seconds, RSS, anonymous RSS, USS] of its largest process at each sample. Memory in MiB."""
    group = {pid: group_of(pid, t, driver) for pid, t in titles.items()}
    at: dict[str, dict[float, list]] = {g: {} for g in GROUPS}  # group -> sample time -> maxima of MEASURES
    for t, pid, *mem in rows:
        now = at[group[pid]].get(t, [None] * len(MEASURES))
        at[group[pid]][t] = [_max(a, None if b is None else b / MIB) for a, b in zip(now, mem)]
    end = max(r[0] for r in rows)
    out = {}
    for g, series in at.items():
        if not series:
            continue
        points = sorted([t, *m] for t, m in series.items())
        entry = {"processes": sum(v == g for v in group.values()),
                 **{f"peak_{m}_mib": _max(*(p[i] for p in points)) for i, m in enumerate(MEASURES, 1)}}
        for i, m in enumerate(MEASURES[:2], 1):
            quarters = {q: _value_at(points, q / 100 * end, i) for q in QUARTERS}
            entry.update({f"{m}_at_{q}pct_mib": v for q, v in quarters.items()})
            entry[f"{m}_growth_mib"] = None if None in (quarters[25], quarters[100]) else quarters[100] - quarters[25]
        entry["titles"] = sorted({t for pid, ts in titles.items() if group[pid] == g for t in ts})
        out[g] = {**entry, "series": _downsample(points)}
    return out


def _value_at(points: list[list], t: float, i: int) -> float | None:
    """Measure i of the last point at or before ``t`` (None when the group had no process yet)."""
    before = [p for p in points if p[0] <= t + 1e-9]
    return before[-1][i] if before else None


def _max(*values: float | None) -> float | None:
    """The largest of the values that are not None (None when all are)."""
    return max((v for v in values if v is not None), default=None)


def _downsample(points: list[list]) -> list[list]:
    """At most SERIES_POINTS points: for each span of consecutive points, its last time and its maxima."""
    step = math.ceil(len(points) / SERIES_POINTS)
    spans = [points[i : i + step] for i in range(0, len(points), step)]
    return [[round(s[-1][0], 2), *(_round(_max(*(p[i] for p in s))) for i in range(1, len(MEASURES) + 1))]
            for s in spans]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# ------------------------------------------------------------------------------------------------ the work
def make_corpus(workdir: Path, n_videos: int, val_videos: int, seed: int) -> Path:
    """A corpus of ``n_videos`` tiny synthetic videos (TINY_VIDEOS), ``val_videos`` of them for validation and the
    others for training, under workdir: made once, then reused."""
    from clipbert.synthetic.corpus import synthesize_corpus

    root = workdir / f"corpus_{n_videos}_val{val_videos}_{seed}"
    if not (root / "corpus.json").exists():
        synthesize_corpus(root, n_videos=n_videos, seed=seed, val_videos=val_videos, test_videos=0,
                          workers=os.cpu_count() or 1, overwrite=True, **TINY_VIDEOS)
    return root


def pick_videos(root: Path, k: int) -> list[Path]:
    """Paths of the first k - V train videos and the V val videos of the corpus."""
    from clipbert.synthetic.corpus import load_corpus

    info = load_corpus(root)
    val = info.splits["val"]
    train = info.splits["train"][: k - len(val)]
    if len(train) + len(val) < k or not train:
        raise ValueError(f"a load of {k} videos needs {k - len(val)} train videos besides the {len(val)} val "
                         f"videos; the corpus has {len(info.splits['train'])}")
    return [info.video_path(v) for v in train + val]


def write_annotations(root: Path, videos: list[Path], out: Path) -> None:
    """out/txt/NAME.jsonl for NAME in ANNOTATIONS: root's rows of those videos, and the corpus tokenizer."""
    keep = {v.stem for v in videos}
    (out / "txt").mkdir(parents=True)
    for name in ANNOTATIONS:
        lines = (root / "txt" / f"{name}.jsonl").read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["clip_name"] in keep]
        (out / "txt" / f"{name}.jsonl").write_text("".join(f"{line}\n" for line in kept))
    shutil.copytree(root / "tokenizer", out / "tokenizer")


def train_config(args: argparse.Namespace, load_dir: Path) -> Config:
    """--config on the load in load_dir: its frame store and annotations, --epochs epochs."""
    overrides = [f"data.root={load_dir}", "data.frame_store=frames", *(f"data.{k}=txt/{v}.jsonl" for k, v in (
        ("train_file", "retrieval_train"), ("val_file", "retrieval_val"), ("val_mc_file", "mc_val"))),
        "data.test_file=", "data.test_mc_file=", "data.tokenizer=tokenizer", f"train.num_workers={args.workers}",
        f"optim.num_epochs={args.epochs}", *args.set]
    return load_config(args.config, overrides)


def preprocess(videos: list[Path], store: Path) -> dict[str, Any]:
    """The frame store of ``videos`` at ``store`` through the pipeline of jobs/preprocess.py; what it stored."""
    from pipelines.preprocess import run_preprocess

    summary = run_preprocess([str(v) for v in videos], str(store))
    return {"videos_ok": summary.videos_ok, "videos_failed": summary.videos_failed, "frames": summary.frames}


def train(cfg: Config, storage: Path) -> dict[str, Any]:
    """Fit cfg, validated at the end of every epoch; its step count and the final report."""
    from clipbert.training.run import build_trainer, prepare_task, schedule

    task = prepare_task(cfg)
    per_epoch, steps = schedule(cfg, len(task.train), cfg.train.num_workers)
    cfg.train.eval_every_steps, cfg.train.log_every_steps = per_epoch, max(1, per_epoch // 10)
    result = build_trainer(cfg, task, storage_path=str(storage), name="memory").fit()
    if result.error:
        raise result.error
    return {"train_rows": len(task.train), "val_rows": len(task.val), "steps": steps,
            "final": {k: result.metrics[k] for k in ("step", "epoch", "train_samples_per_s", cfg.train.metric)}}


def run_load(args: argparse.Namespace, root: Path, k: int) -> dict[str, Any]:
    """Both phases of one load of k videos on a fresh local Ray, each sampled; their figures."""
    import ray

    load_dir = args.workdir / f"load_{k}"
    shutil.rmtree(load_dir, ignore_errors=True)
    videos = pick_videos(root, k)
    write_annotations(root, videos, load_dir)
    cfg = train_config(args, load_dir)
    start_local_ray(args.cpus)
    phases = {}
    try:
        for phase, work in (("preprocess", lambda: preprocess(videos, load_dir / "frames")),
                            ("train", lambda: train(cfg, load_dir / "runs"))):
            with Sampler(args.interval, args.uss_every) as sampler:
                outcome = work()
            phases[phase] = {"seconds": sampler.seconds, "sample_s": sampler.sample_s, **outcome,
                             "groups": summarize(sampler.rows, sampler.titles, os.getpid())}
            print(f"{k} videos, {phase}: {sampler.seconds:.0f} s, {outcome}", flush=True)
    finally:
        ray.shutdown()
    return {"videos": k, "phases": phases}


def table_rows(results: list[dict]) -> list[list]:
    """One row per load, phase and group."""
    rows = []
    for r in results:
        for phase, p in r["phases"].items():
            for g, s in p["groups"].items():
                figures = [s["peak_rss_mib"], s["peak_anon_mib"], s["peak_uss_mib"],
                           *(s[f"rss_at_{q}pct_mib"] for q in QUARTERS), s["rss_growth_mib"], s["anon_growth_mib"]]
                rows.append([r["videos"], phase, p["seconds"], g, s["processes"],
                             *("-" if v is None else v for v in figures)])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()  # absolute: workers run elsewhere
    setup_logging()
    sizes = sorted(int(v) for v in args.sizes.split(","))
    if sizes[0] <= args.val_videos or sizes[-1] > args.videos:
        raise SystemExit(f"--sizes must be more than --val-videos ({args.val_videos}) and at most --videos "
                         f"({args.videos}), got {sizes}")
    root = make_corpus(args.workdir, args.videos, args.val_videos, args.seed)
    results = [run_load(args, root, k) for k in sizes]
    columns = ["videos", "phase", "phase s", "group", "procs", "peak RSS", "peak anon", "peak USS",
               *(f"RSS {q}%" for q in QUARTERS), "RSS growth", "anon growth"]
    print_table(f"Memory (MiB) of the driver and of the largest process of each group, {args.config}, "
                f"{args.workers} train workers, {args.epochs} epoch(s) per load; growth: 25% -> 100% of the phase",
                columns, table_rows(results))
    write_json(args.output, "memory", {
        "config": args.config, "corpus_videos": args.videos, "sizes": sizes, "val_videos": args.val_videos,
        "workers": args.workers, "interval_s": args.interval, "overrides": args.set, "video_options": TINY_VIDEOS,
        "epochs": args.epochs, "uss_every": args.uss_every,
        "memory": "MiB of the group's largest process at each sample: RSS (resident, shared pages included), anon "
        "(RSS without file-backed and shared-memory pages) and USS (pages no other process maps; read at every "
        "uss_every-th sample, else null); series points are [seconds, rss, anon, uss]",
        "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
