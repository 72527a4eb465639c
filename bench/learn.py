"""Benchmark: what the tiny model learns in 20 minutes on this machine, per training mode, on a held-out test split.

Synthesizes (once per seed) a two-event moving-shape corpus of 400 train / 100 val / 100 test videos and
preprocesses it, then trains ``jobs/train.py`` in a subprocess under a wall-time budget, one mode after another
on the same cores:

- scratch_sparse: ``synthetic_tiny`` from random weights (N = 2 random clips of T = 2 frames per video per step);
- scratch_dense:  ``synthetic_tiny_dense`` from random weights (ONE clip of every stored frame), its schedule
  (``--dense-epochs``) sized so that its learning rate decays to 0 within the budget, as the sparse one does;
- image_text:     ClipBERT's recipe: image-text pretraining (``jobs/pretrain.py``, MLM + ITM) on captioned stills
  of the same world (``jobs/synthesize.py --images``, a seed of its own, captions only), then ``synthetic_tiny``
  finetuned from that checkpoint (``model.init_checkpoint``: CNN and transformer); pretraining counts in the budget;
- attribute_cnn:  ``synthetic_tiny`` from a CNN trained to classify each event's colour, shape and direction
  (``clipbert.training.cnn_pretrain``, on a video corpus of another seed): a labelled upper bound, not a weakly supervised
  recipe; its 2 minutes of CNN training count in the budget;
- image_text_words: image_text with a caption-word CNN first (``clipbert.training.caption_cnn``: each still predicts the
  words of its captions from its max-pooled grid, captions only), then image-text pretraining from that CNN, then
  finetuning, both at the pretrained CNN's learning rate (PRETRAINED_CNN_LR); all three stages count in the budget;
- caption_cnn:    attribute_cnn's recipe with the caption-word CNN in place of the labelled one: the CNN learns from
  the stills' captions alone, then ``synthetic_tiny`` is finetuned from it (no MLM + ITM stage), both in the budget.
- recipe:         the recommended label-free recipe: caption_cnn's CNN, then the ``synthetic_recipe`` preset (the CNN
  at 5e-5, two of each video's three random negative captions replaced by one-word swaps of its positive).

Every run evaluates on the validation split (100 videos) as it trains and picks its checkpoint there; the figures
that matter are the held-out TEST split's (100 other videos, never used to choose anything), read from the run's
``final_metrics.json``: text-to-video R@1 of the cross-encoder (chance 1) and of the dual encoder, 5-way
multiple-choice accuracy with the ITM head (chance 20), and search figures: two-stage R@1 (the dual encoder's top
4 / 8 / 16 re-ranked by the re-rank score, ITM margin + w x dual with w chosen on validation) and all pairs. A
run stopped by the budget is scored on test from its best kept checkpoint. The same checkpoint is also scored
(clipbert.training.diagnostics, clipbert.training.probes) on 100 of its TRAINING videos (R@1 of both encoders over
as many candidates as the test split has): a model that ranks its own training videos no better than the test ones
is underfitting, not overfitting. And on the test split, for caption / wrong-video pairs whose videos differ in one
attribute only (colour, shape or direction), how often each encoder ranks the right video above the wrong one
(chance 50): what the model has grounded in pixels, beyond what R@1 says; what the CNN encodes (a linear probe of
its max-pooled grid per attribute, fit on train event clips, scored on test ones, for the CNN the finetuning started
from and for the chosen one); for the image-text modes, also the pretrained checkpoint's masked-word accuracy on
held-out stills per attribute. Wall time counts from the first launch of the mode (Ray start-up, evaluations,
checkpoints and pretraining included; these diagnostics not).

Each invocation writes one JSON per (mode, seed) under ``--records`` (default ``bench/learn_records/``, kept in
the repository with its date and load average, so the table is built over several sessions and machines) and the
runs' logs under OUT/learn_runs/; every invocation then merges all records into OUT/learn.json, the table (each
seed and the mean per mode) and OUT/learn.png. ``--merge-only`` just merges; ``--fill-diagnostics`` scores the
training-set fit, grounding and CNN probe (and the image-text modes' word grounding) of records written without
them, from their runs under ``--workdir`` when those are still the runs the records describe. A record names no
directory of the machine that wrote it: its paths are relative (its "paths" field says so), the jobs to the
repository, the logs to OUT, the corpora, stills, CNNs and runs (``data.root=corpus_400_100_100_s0``,
``--storage-path runs``) to ``--workdir``, where ``--fill-diagnostics`` and the table look them up.

Every schedule is sized to end within the budget on 2 quiet cores (``--sparse-epochs``, ``--dense-epochs``,
``--attribute-epochs`` (also caption_cnn's, after ``--word-min``), for image_text ``--pretrain-epochs`` then
``--finetune-epochs``, for image_text_words ``--word-min``, ``--words-pretrain-epochs`` then
``--words-finetune-epochs``), so that no mode is cut off before its learning rate has decayed; scratch_dense
evaluates as often per schedule as scratch_sparse.

Usage:
    python bench/learn.py --output bench_results --modes image_text --seed 0          # one mode, one seed
    python bench/learn.py --output bench_results --modes scratch_sparse,scratch_dense,attribute_cnn --seed 0
    python bench/learn.py --output bench_results --modes image_text,scratch_sparse --seed 11
    python bench/learn.py --output bench_results --merge-only
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
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
from clipbert.training.diagnostics import (  # noqa: E402
    FIT_KEYS,
    FIT_VIDEOS,
    GROUNDED,
    cnn_probe,
    colour_only_r1,
    fill_run_diagnostics,
    fill_word_grounding,
    grounding,
    one_attribute_pairs,
    test_metrics,
    train_fit,
)
from clipbert.training.probes import word_grounding  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Mode:
    preset: str  # finetuning preset
    label: str  # how the table names it
    pretrain_sets: tuple[str, ...] = ()  # image-text pretraining overrides of this mode (--set comes after)
    finetune_sets: tuple[str, ...] = ()  # finetuning overrides of this mode (--set comes after)


# A pretrained CNN is finetuned at the original recipe's CNN learning rate (5e-5): synthetic_tiny's 1e-3 is for a CNN
# from random weights; with 1e-3, the caption-word CNN that reached finetuning read shape / direction at 46.5-49 /
# 69.5-74% on the linear probe (cnn_probe), with 5e-5 at 100 / 100%.
PRETRAINED_CNN_LR = ("optim.cnn_lr=5e-5",)


MODES = {
    "scratch_sparse": Mode("synthetic_tiny", "scratch, sparse (N=2, T=2)"),
    "scratch_dense": Mode("synthetic_tiny_dense", "scratch, dense (every stored frame)"),
    "image_text": Mode("synthetic_tiny", "image-text pretrained, sparse"),
    "image_text_words": Mode("synthetic_tiny", "image-text pretrained, caption-word CNN first, sparse",
                             PRETRAINED_CNN_LR, PRETRAINED_CNN_LR),
    "caption_cnn": Mode("synthetic_tiny", "caption-word CNN (captions only), sparse"),
    "attribute_cnn": Mode("synthetic_tiny", "attribute-supervised CNN (labelled upper bound), sparse"),
    "recipe": Mode("synthetic_recipe", "recipe: caption-word CNN, one-word swap negatives, CNN lr 5e-5"),
}
IMAGE_TEXT_MODES = ("image_text", "image_text_words")  # MLM + ITM pretraining on the stills before finetuning
# label-free, from captioned stills: the targets are theirs to meet
STILLS_MODES = (*IMAGE_TEXT_MODES, "caption_cnn", "recipe")
CAPTION_CNN_MODES = ("image_text_words", "caption_cnn", "recipe")  # the caption-word CNN comes first
# finetuned straight from a pretrained CNN (--attribute-epochs)
CNN_FIRST_MODES = ("caption_cnn", "attribute_cnn", "recipe")
TARGETS = {"t2v_r1": 50.0, "mc_acc": 80.0}  # percent: R@1 >= 0.5 over 100 videos, MC accuracy >= 0.8
TABLE_KEYS = ("t2v_r1", "t2v_r5", "t2v_medr", "itc_t2v_r1", "mc_acc")
POLL_S = 5.0


# ------------------------------------------------------------------------------------------------ corpus
def prepare_corpus(workdir: Path, splits: tuple[int, int, int], seed: int, max_side: int) -> Path:
    """Synthesize, write the tokenizer and preprocess (each step skipped when already done); returns the root."""
    from clipbert.synthetic.corpus import synthesize_corpus
    from clipbert.data.text import write_vocab

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
    rates = [v for _, _, tag, v in scalars if tag == "train/samples_per_s"][1:]
    waits = [v for _, _, tag, v in scalars if tag == "train/data_wait_fraction"][1:]
    return {"samples_per_s": statistics.median(rates) if rates else float("nan"),
            "data_wait_fraction": statistics.median(waits) if waits else float("nan")}


def meets_targets(point: dict[str, float]) -> bool:
    return all(point.get(k, float("-inf")) >= v for k, v in TARGETS.items())


def prepare_images(workdir: Path, n_images: int, val_images: int, seed: int, max_side: int) -> Path:
    """Synthesize captioned stills and preprocess them into a frame store (each step skipped when done)."""
    from clipbert.synthetic.stills import synthesize_images

    root = workdir / f"stills_{n_images}_{val_images}_s{seed}"
    if not (root / "images.json").exists():
        print(f"synthesizing {n_images} stills into {root} ...", flush=True)
        synthesize_images(root, n_images=n_images, val_images=val_images, seed=seed, overwrite=True)
    if not (root / "frames" / "manifest.parquet").exists():
        subprocess.run([sys.executable, str(REPO / "jobs" / "preprocess.py"), "--videos", str(root / "images"),
                        "--output", str(root / "frames"), "--max-side", str(max_side)], check=True, cwd=REPO)
    return root


# ------------------------------------------------------------------------------------------------ one run
def _stop(proc: subprocess.Popen) -> None:
    """Interrupt the job (Ray shuts down on SIGINT), then kill its process group if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclasses.dataclass
class Run:
    """One job launched by the bench and watched until it ends or the mode's budget runs out."""

    name: str
    job: str  # "train.py" or "pretrain.py"
    preset: str
    sets: list[str]
    storage: Path
    log: Path

    @property
    def directory(self) -> Path:
        return self.storage / self.name

    def command(self, num_workers: int) -> list[str]:
        return [sys.executable, str(REPO / "jobs" / self.job), "--config", self.preset, "--num-workers",
                str(num_workers), "--storage-path", str(self.storage), "--name", self.name,
                *[a for s in self.sets for a in ("--set", s)]]

    def watch(self, num_workers: int, t0: float, deadline: float, label: str) -> dict[str, Any]:
        """Run the job until it exits or ``deadline`` (time.time()); prints each evaluation as it appears."""
        shutil.rmtree(self.directory, ignore_errors=True)
        cmd = self.command(num_workers)
        print(f"\n[{label}] {' '.join(cmd[1:])}\n[{label}] log: {self.log}", flush=True)
        env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
        loads, stopped, shown = [], "schedule finished", 0
        started = time.time()
        with open(self.log, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                    start_new_session=True)
            try:
                while proc.poll() is None:
                    time.sleep(POLL_S)
                    loads.append(os.getloadavg()[0])
                    curve = curve_from_scalars(read_scalars(self.directory / "tensorboard"), t0)
                    for p in curve[shown:]:
                        print(f"[{label}] {_fmt_point(p)}", flush=True)
                    shown = len(curve)
                    if time.time() > deadline:
                        stopped = "budget"
                        break
            finally:
                _stop(proc)
        if stopped != "budget" and proc.returncode != 0:
            stopped = f"failed (exit {proc.returncode}; see {self.log})"
        scalars = read_scalars(self.directory / "tensorboard")
        curve = curve_from_scalars(scalars, t0)
        final = self.directory / "final_metrics.json"
        return {"command": " ".join(cmd[1:]), "stopped": stopped, "seconds": time.time() - started, "curve": curve,
                "final_metrics": json.loads(final.read_text()) if final.exists() else None,
                **train_rate(scalars), "load_avg": _mean(loads)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# ------------------------------------------------------------------------------------------------ modes
def image_text_checkpoint(name: str, stills: Path, workdir: Path, args: argparse.Namespace, t0: float,
                          deadline: float, extra: list[str]) -> tuple[Path, dict[str, Any]]:
    """Image-text pretraining on the stills (``extra`` sets last); returns (its exported best/ checkpoint, its run)."""
    run = Run(f"learn_{name}_pretrain_s{args.seed}", "pretrain.py", "synthetic_tiny_pretrain",
              [f"data.root={stills}", f"optim.num_epochs={args.pretrain_epochs}",
               f"train.eval_every_steps={args.pretrain_eval_every}", *MODES[name].pretrain_sets, *args.set, *extra],
              workdir / "runs", Path(args.output) / "learn_runs" / f"{name}_pretrain_s{args.seed}.log")
    result = run.watch(args.num_workers, t0, deadline, f"{name} pretrain")
    if not (run.directory / "best" / "model.safetensors").exists():
        raise SystemExit(f"image-text pretraining exported no checkpoint ({result['stopped']}); see {run.log}")
    result["corpus"] = str(stills)
    return run.directory / "best", result


def attribute_cnn(workdir: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The attribute-supervised CNN (colour, shape, direction labels) on a video corpus of its own seed, cached."""
    from clipbert.training.cnn_pretrain import pretrain_cnn

    if args.cnn_seed == args.seed:
        raise SystemExit("--cnn-seed must differ from --seed: the CNN's videos must not be retrieval ones")
    root = prepare_corpus(workdir, (400, 50, 0), args.cnn_seed, args.max_side)
    model_cfg = load_config("synthetic_tiny", args.set).model
    key = hashlib.blake2b(json.dumps(dataclasses.asdict(model_cfg), sort_keys=True).encode(), digest_size=4).hexdigest()
    out = workdir / f"cnn_{root.name}_{args.cnn_min:g}min_{key}"
    if not (out / "pretrain_metrics.json").exists():
        pretrain_cnn(model_cfg, root, root / "frames", out, minutes=args.cnn_min)
    return out, json.loads((out / "pretrain_metrics.json").read_text())


def caption_cnn(stills: Path, workdir: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The CNN pretrained to predict the stills' caption words (clipbert.training.caption_cnn; captions only), cached."""
    from clipbert.training.caption_cnn import pretrain_cnn_on_captions

    cfg = load_config("synthetic_tiny_pretrain", [f"data.root={stills}", *args.set])
    key = hashlib.blake2b(json.dumps(dataclasses.asdict(cfg.model), sort_keys=True).encode(), digest_size=4).hexdigest()
    out = workdir / f"caption_cnn_{stills.name}_{args.word_min:g}min_{key}"
    if not (out / "pretrain_metrics.json").exists():
        pretrain_cnn_on_captions(cfg, out, minutes=args.word_min)
    return out, json.loads((out / "pretrain_metrics.json").read_text())


def run_mode(name: str, root: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One mode on one corpus seed under the budget; returns its record (curves, test figures, load, date).

    Data preparation (synthesis, preprocessing) is not timed; pretraining is: the budget starts before it."""
    mode = MODES[name]
    sets = [f"data.root={root}", f"train.eval_every_steps={args.eval_every}", *mode.finetune_sets, *args.set]
    record: dict[str, Any] = {"mode": name, "label": mode.label, "seed": args.seed, "date": time.strftime("%Y-%m-%d"),
                              "load_avg_before": os.getloadavg()[0], "budget_min": args.budget_min}
    pretrained_s, cnn = 0.0, None
    if name == "scratch_sparse":
        sets += [f"optim.num_epochs={args.sparse_epochs}"]
    elif name == "scratch_dense":  # as many evaluations per schedule as the sparse mode (same steps per epoch)
        every = max(1, round(args.eval_every * args.dense_epochs / args.sparse_epochs))
        sets += [f"sampling.dense_frames={max_stored_frames(root / 'frames')}", f"train.eval_every_steps={every}",
                 f"train.log_every_steps={max(1, every // 5)}", f"optim.num_epochs={args.dense_epochs}"]
    elif name == "attribute_cnn":
        cnn, record["pretrain"] = attribute_cnn(workdir, args)
        pretrained_s = record["pretrain"]["seconds"]  # counted even when the CNN was cached
    elif name in STILLS_MODES:
        if args.image_seed == args.seed:
            raise SystemExit("--image-seed must differ from --seed")
        stills = prepare_images(workdir, args.images, args.val_images, args.image_seed, args.max_side)
        if (stills / "tokenizer" / "vocab.txt").read_text() != (root / "tokenizer" / "vocab.txt").read_text():
            raise SystemExit(f"{stills}/tokenizer and {root}/tokenizer differ: re-synthesize one of them")
        if name in CAPTION_CNN_MODES:
            cnn, record["caption_cnn"] = caption_cnn(stills, workdir, args)
            pretrained_s = record["caption_cnn"]["seconds"]  # counted even when the CNN was cached
    t0 = time.time() - pretrained_s
    deadline = t0 + 60.0 * args.budget_min
    if name in IMAGE_TEXT_MODES:
        words = name == "image_text_words"
        extra = [f"model.init_checkpoint={cnn}", f"optim.num_epochs={args.words_pretrain_epochs}"] if words else []
        checkpoint, record["pretrain"] = image_text_checkpoint(name, stills, workdir, args, t0, deadline, extra)
        epochs = args.words_finetune_epochs if words else args.finetune_epochs
        sets += [f"model.init_checkpoint={checkpoint}", f"optim.num_epochs={epochs}"]
        pretrained = checkpoint
    elif name in CNN_FIRST_MODES:
        sets += [f"model.init_checkpoint={cnn}", f"optim.num_epochs={args.attribute_epochs}"]
    run = Run(f"learn_{name}_s{args.seed}", "train.py", mode.preset, sets, workdir / "runs",
              Path(args.output) / "learn_runs" / f"{name}_s{args.seed}.log")
    result = run.watch(args.num_workers, t0, deadline, name)
    wall_s = time.time() - t0
    test, step = test_metrics(result, run.directory, mode.preset, sets)
    record["train_fit"] = train_fit(result, run.directory, mode.preset, sets)
    record["grounding"] = grounding(result, run.directory, mode.preset, sets)
    record["colour_only_r1"] = colour_only_r1(result, run.directory, mode.preset, sets)
    record["cnn_probe"] = cnn_probe(result, run.directory, mode.preset, sets)
    if name in IMAGE_TEXT_MODES:
        record["pretrain"]["word_grounding"] = word_grounding(pretrained, stills)
    hit = next((p for p in result["curve"] if meets_targets(p)), None)
    record.update(result, wall_s=wall_s, test=test, test_step=step, preset=mode.preset,
                  val_best={k: max((p[k] for p in result["curve"] if k in p), default=None) for k in TARGETS},
                  val_min_to_target=hit["wall_s"] / 60 if hit else None,
                  steps=result["curve"][-1]["step"] if result["curve"] else 0)
    return record


def fill_diagnostics(records_dir: Path, workdir: Path, output: Path) -> None:
    """Score the clipbert.training.diagnostics.DIAGNOSTICS (and an image_text record's pretraining word grounding) of records
    written without them, from their runs under WORKDIR/runs, when the run there is still the one the record describes
    (same figures)."""
    for path in sorted(records_dir.glob("*.json")):
        record = json.loads(path.read_text())
        runs = workdir / "runs"
        filled = fill_run_diagnostics(path.name, record, runs / f"learn_{record['mode']}_s{record['seed']}",
                                      command_sets(record, workdir))
        if record["mode"] in IMAGE_TEXT_MODES:
            pretrain_dir = runs / f"learn_{record['mode']}_pretrain_s{record['seed']}"
            filled |= fill_word_grounding(path.name, record["pretrain"], pretrain_dir,
                                          workdir / record["pretrain"]["corpus"])
        if filled:
            write_record(path, record, workdir, output)


# ------------------------------------------------------------------------------------------------ records
PATH_SETS = ("data.root", "model.init_checkpoint")  # the --set overrides of a run whose value is a path
PATHS_NOTE = ("relative paths: jobs/ to the repository, learn_runs/ to --output, the others (corpora, stills, CNNs, "
              "runs/) to --workdir")


def relative_paths(value: Any, bases: tuple[Path, ...]) -> Any:
    """A record (or any JSON value in it) with every path under one of ``bases`` written relative to that base (the
    base itself as "."), the longest base first: nothing in it names a directory of the machine that wrote it."""
    if isinstance(value, dict):
        return {k: relative_paths(v, bases) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [relative_paths(v, bases) for v in value]
    if isinstance(value, str):
        for base in sorted({str(b) for b in bases}, key=len, reverse=True):
            # a path starts a string or follows a space, "=" or "(", and the base ends at a "/", a space, ")" or the end
            pattern = rf"(?<![^\s=(]){re.escape(base)}(/|(?=[\s)]|$))"
            value = re.sub(pattern, lambda m: "" if m.group(1) else ".", value)
    return value


def write_record(path: Path, record: dict[str, Any], workdir: Path, output: Path) -> None:
    """Write a record as JSON, its paths relative (PATHS_NOTE, kept in the record as "paths")."""
    portable = relative_paths(record, (workdir, output.resolve(), output, REPO))
    path.write_text(json.dumps({**portable, "paths": PATHS_NOTE}, indent=1, default=float))


def command_sets(record: dict[str, Any], workdir: Path) -> list[str]:
    """The --set overrides of a record's run, the PATH_SETS paths resolved against ``workdir`` (an absolute one is
    kept as it is)."""
    args = record.get("command", "").split()
    return [_resolved(args[i + 1], workdir) for i, a in enumerate(args) if a == "--set"]


def _resolved(override: str, workdir: Path) -> str:
    key, _, value = override.partition("=")
    return f"{key}={workdir / value}" if key in PATH_SETS else override


def _fmt_point(p: dict[str, float]) -> str:
    parts = [f"{p['wall_s'] / 60:5.1f} min", f"step {p['step']:5d}"]
    shown = ("t2v_r1", "itc_t2v_r1", "fused_t2v_r1", "rerank8_t2v_r1", "mc_acc", "itm_acc", "mlm_acc")
    parts += [f"{k} {p[k]:.0f}" for k in shown if k in p]
    return "  ".join(parts)
# ------------------------------------------------------------------------------------------------ the table
def load_records(runs_dir: Path) -> list[dict[str, Any]]:
    """Every (mode, seed) record written so far, in MODES order, then by seed."""
    records = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
    order = list(MODES)
    return sorted(records, key=lambda r: (order.index(r["mode"]) if r["mode"] in order else len(order), r["seed"]))


def _test(record: dict[str, Any], key: str) -> float | None:
    return (record.get("test") or {}).get(key)


def _fit(record: dict[str, Any], key: str) -> float | None:
    return (record.get("train_fit") or {}).get(key)


def pretrain_minutes(record: dict[str, Any]) -> float:
    """Minutes of the mode's budget spent before finetuning: every pretraining stage it ran."""
    return sum((record.get(stage) or {}).get("seconds", 0.0) for stage in ("caption_cnn", "pretrain")) / 60


def train_speed(record: dict[str, Any]) -> float | None:
    """Median training samples/s of the finetuning run's evaluation windows: a run that shared the cores with other
    work shows it here (one worker alone: about 90-100 on this machine for synthetic_tiny)."""
    rates = [p["train_samples_per_s"] for p in record.get("curve", []) if p.get("train_samples_per_s")]
    return statistics.median(rates) if rates else None


def table_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per record, then a mean row per mode with more than one seed."""
    rows = []
    for name in MODES:
        mine = [r for r in records if r["mode"] == name]
        for r in mine:
            rows.append([r["label"], r["seed"], *(_test(r, k) for k in TABLE_KEYS), *(_fit(r, k) for k in FIT_KEYS),
                         r["test_step"], r["steps"], train_speed(r), pretrain_minutes(r), r["wall_s"] / 60,
                         r["stopped"], r["date"], r["load_avg"]])
        if len(mine) > 1:
            means = [statistics.mean(v) if len(v := [x for r in mine if (x := get(r, k)) is not None]) == len(mine)
                     else None for get, keys in ((_test, TABLE_KEYS), (_fit, FIT_KEYS)) for k in keys]
            rows.append([f"{MODES[name].label}: mean", "all", *means, "", "", "", "", "", "", "", ""])
    return rows


RERANK_KEYS = ("itc_t2v_r1", "rerank4_t2v_r1", "rerank8_t2v_r1", "rerank16_t2v_r1", "fused_t2v_r1", "t2v_r1",
               "rerank8_itm_t2v_r1", "fuse_weight")


def rerank_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per record whose test figures include search (two-stage) figures, then a mean row per mode."""
    rows = []
    for name in MODES:
        mine = [r for r in records if r["mode"] == name and _test(r, "rerank8_t2v_r1") is not None]
        rows += [[r["label"], r["seed"], *(_test(r, k) for k in RERANK_KEYS)] for r in mine]
        if len(mine) > 1:
            rows.append([f"{MODES[name].label}: mean", "all",
                         *(statistics.mean(_test(r, k) for r in mine) for k in RERANK_KEYS[:-1]), ""])
    return rows


def corpus_root(record: dict[str, Any], workdir: Path) -> Path | None:
    """The retrieval corpus a record's run trained on (its command's data.root, under ``workdir``), if it names one."""
    roots = [s.split("=", 1)[1] for s in command_sets(record, workdir) if s.startswith("data.root=")]
    return Path(roots[-1]) if roots else None


def grounding_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per record with a grounding diagnostic: mode, seed, cross then dual encoder per GROUNDED attribute,
    and the test R@1 that colour alone gives on the record's corpus."""
    return [[r["label"], r["seed"], *(r["grounding"][e].get(a) for e in ("cross", "dual") for a in GROUNDED),
             r.get("colour_only_r1")] for r in records if r.get("grounding")]


def probe_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per record that has a CNN probe: start and chosen accuracy per attribute."""
    return [[r["label"], r["seed"], *(r["cnn_probe"][w].get(a) for w in ("start", "chosen") for a in GROUNDED)]
            for r in records if r.get("cnn_probe")]


def verdicts(records: list[dict[str, Any]]) -> list[str]:
    """The paper's three claims, read off the means of the test figures (where the modes were run)."""
    def mean(name: str, key: str) -> float | None:
        values = [_test(r, key) for r in records if r["mode"] == name]
        return statistics.mean(values) if values and None not in values else None

    lines = []
    sparse_r1, sparse_mc = mean("scratch_sparse", "t2v_r1"), mean("scratch_sparse", "mc_acc")
    if sparse_r1 is not None:
        lines.append(f"1. end to end from pixels, from random weights: test R@1 {sparse_r1:.1f} (chance 1), "
                     f"MC {sparse_mc:.1f} (chance 20): learns, " + ("well" if sparse_r1 >= 50 else "but far from "
                     "the targets"))
    dense_r1, dense_mc = mean("scratch_dense", "t2v_r1"), mean("scratch_dense", "mc_acc")
    if sparse_r1 is not None and dense_r1 is not None:
        better = sparse_r1 > dense_r1 and sparse_mc > dense_mc
        lines.append(f"2. less is more (same budget): sparse R@1 {sparse_r1:.1f} / MC {sparse_mc:.1f} against dense "
                     f"{dense_r1:.1f} / {dense_mc:.1f}: " + ("holds" if better else "does not hold on both metrics"))
    for name in STILLS_MODES:
        it_r1, it_mc = mean(name, "t2v_r1"), mean(name, "mc_acc")
        if it_r1 is None:
            continue
        label = MODES[name].label.removesuffix(", sparse")
        if sparse_r1 is not None:
            helps = it_r1 > sparse_r1 and it_mc > sparse_mc
            lines.append(f"3. {label} helps: R@1 {it_r1:.1f} / MC {it_mc:.1f} against {sparse_r1:.1f} / "
                         f"{sparse_mc:.1f} from scratch: " + ("holds" if helps else "does not hold on both metrics"))
        seeds = [r for r in records if r["mode"] == name]
        met = [r["seed"] for r in seeds if all((_test(r, k) or 0) >= v for k, v in TARGETS.items())]
        lines.append(f"targets, {label} (test R@1 >= 50 and MC >= 80 within {seeds[0]['budget_min']:g} min, no "
                     f"attribute labels): met on seeds {met or 'none'} of {[r['seed'] for r in seeds]}")
    return lines


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Validation curves against wall time, one colour per mode, one line style per seed; the targets dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(MODES, ("tab:blue", "tab:grey", "tab:green", "tab:purple", "tab:red", "tab:orange",
                               "tab:brown")))
    seeds = sorted({r["seed"] for r in records})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), sharex=True)
    for ax, key, title in zip(axes, ("t2v_r1", "mc_acc", "itc_t2v_r1"),
                              ("text-to-video R@1, cross-encoder (val, %)", "multiple-choice accuracy (val, %)",
                               "text-to-video R@1, dual encoder (val, %)")):
        for r in records:
            pts = [p for p in r["curve"] if key in p]
            style = ("-", "--", ":", "-.")[seeds.index(r["seed"]) % 4]
            ax.plot([p["wall_s"] / 60 for p in pts], [p[key] for p in pts], style, color=colours.get(r["mode"]),
                    marker="o", markersize=2, label=f"{r['mode']} s{r['seed']}")
        if key in TARGETS:
            ax.axhline(TARGETS[key], color="black", linestyle=":", linewidth=1)
        ax.set(title=title, xlabel="wall time since the mode's launch (min)", ylim=(0, 100))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(out: Path, records_dir: Path, workdir: Path) -> dict[str, Any]:
    """Print the one table of every record under ``records_dir``, write OUT/learn.json and OUT/learn.png; the records'
    corpora are looked up under ``workdir``."""
    records = load_records(records_dir)
    if not records:
        raise SystemExit(f"no runs under {records_dir}")
    out.mkdir(parents=True, exist_ok=True)
    print_table("held-out TEST split (100 videos; checkpoint chosen on validation), percent; chance R@1 1, MC 20; "
                f"train R@1 / train dual: the same checkpoint on {FIT_VIDEOS} training videos",
                ["mode", "seed", "R@1", "R@5", "MdR", "dual R@1", "MC", "train R@1", "train dual", "ckpt step", "steps",
                 "samples/s", "pretrain min", "wall min", "stopped", "date", "load"], table_rows(records))
    if reranked := rerank_rows(records):
        print_table("search on TEST: the dual encoder's R@1, two-stage R@1 (its top 4 / 8 / 16 re-ranked by the "
                    "re-rank score: ITM margin + w x dual, w chosen on validation), all pairs by that score and by the "
                    "ITM margin alone, two-stage top 8 by the margin alone; percent",
                    ["mode", "seed", "dual", "top 4", "top 8", "top 16", "all pairs", "all pairs ITM", "top 8 ITM",
                     "w"], reranked)
    if grounded := grounding_rows(records):
        print_table("what each chosen checkpoint tells apart on TEST: pairs of videos that differ in one attribute "
                    "only, percent ranked right (chance 50)",
                    ["mode", "seed", *(f"{e} {a}" for e in ("cross", "dual") for a in GROUNDED),
                     "colour-only R@1"], grounded)
        for seed, root in sorted({(r["seed"], corpus_root(r, workdir)) for r in records if r.get("grounding")}):
            if root and (root / "corpus.json").exists():
                print(f"seed {seed}: one-attribute pairs in the test split {one_attribute_pairs(root)}")
    if probes := probe_rows(records):
        print_table("what each run's CNN encodes: linear probe of the max-pooled grid on TEST event clips, percent "
                    "(chance colour 17, shape and direction 25); start = the CNN finetuning began from",
                    ["mode", "seed", *(f"{w} {a}" for w in ("start", "chosen") for a in GROUNDED)], probes)
    if words := [[r["label"], r["seed"], *(r["pretrain"]["word_grounding"].get(a) for a in GROUNDED)]
                 for r in records if (r.get("pretrain") or {}).get("word_grounding")]:
        print_table("image-text pretraining: held-out masked-word accuracy among each attribute's words, percent "
                    "(chance colour 17, shape and direction 25)", ["mode", "seed", *GROUNDED], words)
    lines = verdicts(records)
    print("\n" + "\n".join(lines))
    plot(records, out / "learn.png")
    payload = {"targets": TARGETS, "verdicts": lines, "records": records}
    write_json(out, "learn", payload)
    print(f"wrote {out / 'learn.png'}")
    return payload


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="bench_results", help="where learn.json, learn.png and the logs go")
    p.add_argument("--records", default=str(REPO / "bench" / "learn_records"), help="one JSON per (mode, seed)")
    p.add_argument("--workdir", default="bench_work/learn", help="corpora and run storage (reused between runs)")
    p.add_argument("--modes", default="image_text", help="comma-separated, from: " + ", ".join(MODES))
    p.add_argument("--seed", type=int, default=0, help="seed of the retrieval corpus (400 / 100 / 100 videos)")
    p.add_argument("--merge-only", action="store_true", help="only merge the records already written")
    p.add_argument("--fill-diagnostics", action="store_true",
                   help="score the training-set fit and test grounding of records written without them (from their "
                        "runs in --workdir)")
    p.add_argument("--max-side", type=int, default=160, help="longer side of the stored frames")
    p.add_argument("--budget-min", type=float, default=20.0, help="wall-time budget per mode (minutes)")
    p.add_argument("--num-workers", type=int, default=1,
                   help="Ray Train workers (on 2 cores one worker, batch 16 per step, learns faster per minute than 2)")
    p.add_argument("--eval-every", type=int, default=250, help="optimiser steps between evaluations (sparse modes)")
    p.add_argument("--sparse-epochs", type=float, default=140.0,
                   help="scratch_sparse schedule (3,500 steps): sized to end within the budget on 2 quiet cores")
    p.add_argument("--dense-epochs", type=float, default=17.0,
                   help="scratch_dense schedule (425 steps of 48-frame clips, ~0.47 steps/s): ends within the budget")
    p.add_argument("--attribute-epochs", type=float, default=160.0,
                   help="attribute_cnn and caption_cnn finetuning schedule (4,000 steps): fits the budget after their "
                   "CNN's 2-2.5 minutes")
    p.add_argument("--image-seed", type=int, default=None, help="seed of the stills (default: 1000 + --seed)")
    p.add_argument("--images", type=int, default=6400, help="stills to synthesize (train + val)")
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--pretrain-epochs", type=float, default=3.5,
                   help="image-text pretraining schedule (3.5 x ~590 = ~2,070 steps of 32 caption pairs, ~8 min)")
    p.add_argument("--pretrain-eval-every", type=int, default=200)
    p.add_argument("--finetune-epochs", type=float, default=76.0,
                   help="image_text finetuning schedule (1,900 steps): fits the budget after pretraining")
    p.add_argument("--word-min", type=float, default=2.5,
                   help="image_text_words: minutes of caption-word CNN pretraining on the stills (counted)")
    p.add_argument("--words-pretrain-epochs", type=float, default=2.0,
                   help="image_text_words: image-text pretraining epochs from the caption-word CNN (~1,180 steps)")
    p.add_argument("--words-finetune-epochs", type=float, default=120.0,
                   help="image_text_words finetuning schedule (3,000 steps): fits the budget after both pretrainings")
    p.add_argument("--cnn-seed", type=int, default=None, help="attribute_cnn's video seed (default: 1 + --seed)")
    p.add_argument("--cnn-min", type=float, default=2.0, help="attribute_cnn: minutes of CNN training")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    args = p.parse_args(argv)
    args.image_seed = 1000 + args.seed if args.image_seed is None else args.image_seed
    args.cnn_seed = 1 + args.seed if args.cnn_seed is None else args.cnn_seed
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out, records, workdir = Path(args.output), Path(args.records), Path(args.workdir).resolve()
    if args.fill_diagnostics:
        fill_diagnostics(records, workdir, out)
    elif not args.merge_only:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if unknown := [m for m in modes if m not in MODES]:
            raise SystemExit(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
        root = prepare_corpus(workdir, (400, 100, 100), args.seed, args.max_side)
        for path in (out / "learn_runs", records):
            path.mkdir(parents=True, exist_ok=True)
        for name in modes:
            record = run_mode(name, root, workdir, args)
            write_record(records / f"{name}_s{args.seed}.json", record, workdir, out)
    return merge(out, records, workdir)


if __name__ == "__main__":
    main()
