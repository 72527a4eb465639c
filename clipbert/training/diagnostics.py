"""What a training run on a synthesized corpus has learnt: figures computed from its chosen checkpoint and its corpus.

A run is read from its directory (the job's ``best/`` export, ``checkpoint_*`` kept on the way) and a dict with the
job's ``final_metrics`` (its final_metrics.json; None when it was stopped before exporting) and its validation
``curve`` (one dict per evaluation: ``step`` and the val metrics), with the preset and ``--set`` overrides it
trained with. The checkpoint chosen on validation is the export, else the best kept one. Its figures:

- ``test_metrics``: the held-out test figures (the job's own, else scored here as the job scores them);
- ``train_fit``: R@1 of both encoders on FIT_VIDEOS training videos (near the test figures = underfitting);
- ``grounding``: on test pairs of videos that differ in one attribute only, how often each encoder ranks the right
  video higher (chance 50); ``colour_only_r1``: the test R@1 that colour alone gives on the corpus;
- ``cnn_probe``: a linear probe of the CNN per attribute (clipbert.training.probes), before finetuning and after.

``fill_run_diagnostics`` and ``fill_word_grounding`` add the figures a record of a run lacks, from the run's directory
when it still holds the run the record describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipbert.model.checkpoint import build_model, load_checkpoint
from clipbert.config import Config, load_config
from clipbert.data.annotations import retrieval_eval_lists
from clipbert.training.evaluation import evaluate, retrieval_scores
from clipbert.model.clipbert import ClipBert
from clipbert.training.probes import event_clips, linear_probe, word_grounding
from clipbert.synthetic.corpus import load_corpus
from clipbert.synthetic.vocabulary import ATTRIBUTES
from clipbert.training.run import prepare_task

FIT_KEYS = ("t2v_r1", "itc_t2v_r1")  # also scored on training videos (train_fit)
FIT_VIDEOS = 100  # as many training videos as a 100-video test split has, so that R@1 is over as many candidates
GROUNDED = tuple(ATTRIBUTES)  # the grounding diagnostic's attributes: colour, shape, direction

Events = list[tuple[str, ...]]  # a video's events, each (colour, shape, direction)


# ------------------------------------------------------------------------------------------------ the chosen checkpoint
def _kept_step(directory: Path) -> int:
    return int(torch.load(directory / "train_state.pt", map_location="cpu", weights_only=True)["step"])


def best_kept_checkpoint(run_dir: Path, curve: list[dict[str, float]], metric: str) -> Path | None:
    """The kept checkpoint of a run stopped by the budget whose step scored best on ``metric`` (validation)."""
    by_step = {}
    for d in run_dir.glob("checkpoint_*"):
        try:
            by_step[_kept_step(d)] = d
        except (OSError, RuntimeError, KeyError):
            continue
    scored = [p for p in curve if int(p["step"]) in by_step and metric in p]
    return by_step[int(max(scored, key=lambda p: p[metric])["step"])] if scored else None


def chosen_checkpoint(run: dict[str, Any], run_dir: Path, metric: str) -> Path | None:
    """The checkpoint chosen on validation: the job's export (best/) when it finished, else the best kept one."""
    if run["final_metrics"] and (run_dir / "best" / "model.safetensors").exists():
        return run_dir / "best"
    return best_kept_checkpoint(run_dir, run["curve"], metric)


def chosen_model(run: dict[str, Any], run_dir: Path, preset: str, sets: list[str]) -> tuple[Config, ClipBert] | None:
    """(config, model) of the run's checkpoint chosen on validation; None when the run kept no checkpoint."""
    cfg = load_config(preset, sets)
    checkpoint = chosen_checkpoint(run, run_dir, cfg.train.metric)
    return None if checkpoint is None else (cfg, load_checkpoint(checkpoint)[0])


def test_metrics(run: dict[str, Any], run_dir: Path, preset: str, sets: list[str]) -> tuple[dict | None, int | None]:
    """(test metrics, step of the checkpoint chosen on validation): the job's own final_metrics.json, else the best
    kept checkpoint scored here, on the same test rows and with the same dense inference."""
    final = run["final_metrics"]
    if final and final.get("test"):
        return final["test"], final.get("step")
    cfg = load_config(preset, sets)
    checkpoint = best_kept_checkpoint(run_dir, run["curve"], cfg.train.metric)
    if checkpoint is None:
        return None, None
    task = prepare_task(cfg)
    model, _ = load_checkpoint(checkpoint)
    step = _kept_step(checkpoint)
    fuse_weight = next((p.get("fuse_weight") for p in run["curve"] if p["step"] == step), None)
    return evaluate(model, cfg, task.test, torch.device("cpu"), mc_rows=task.test_mc, fuse_weight=fuse_weight), step



# ------------------------------------------------------------------------------------------------ figures of a run
def train_fit(run: dict[str, Any], run_dir: Path, preset: str, sets: list[str]) -> dict[str, float] | None:
    """Text-to-video R@1 (cross and dual encoder) of the checkpoint chosen on validation on the first FIT_VIDEOS
    training videos, scored as the test split is: how well the model fits what it trained on (near its test figures
    = underfitting); None when the run kept no checkpoint."""
    if (chosen := chosen_model(run, run_dir, preset, sets)) is None:
        return None
    cfg, model = chosen
    metrics = evaluate(model, cfg, prepare_task(cfg).train[:FIT_VIDEOS], torch.device("cpu"))
    return {k: metrics[k] for k in FIT_KEYS}


def grounding(run: dict[str, Any], run_dir: Path, preset: str, sets: list[str]) -> dict[str, dict[str, float]] | None:
    """What the checkpoint chosen on validation tells apart on the TEST split: for every caption and every wrong
    video that differs from the right one in one attribute only (colour, shape or direction of one or both events,
    events aligned the way that differs least), the percentage of such pairs where the right video scores higher
    (chance 50), for the cross and the dual encoder; None when the run kept no checkpoint."""
    if (chosen := chosen_model(run, run_dir, preset, sets)) is None:
        return None
    cfg, model = chosen
    videos, captions, gt = retrieval_eval_lists(prepare_task(cfg).test)
    events = {v.video_id: [e.key() for e in v.events] for v in load_corpus(cfg.data.root).videos}
    differing = np.array([[only_attribute(events[videos[g]], events[v]) for v in videos] for g in gt])  # (M, V)
    scores, itc = retrieval_scores(model, cfg, videos, captions, torch.device("cpu"))
    out: dict[str, dict[str, float]] = {"cross": {}, "dual": {}}
    for encoder, s in (("cross", scores), ("dual", itc)):
        if s is None:  # no contrastive heads: no dual encoder
            continue
        right = s[np.arange(len(gt)), gt][:, None] > s  # (M, V): right video above this one
        out[encoder] = {a: 100.0 * float(right[differing == a].mean()) for a in ATTRIBUTES if (differing == a).any()}
    return out


def colour_only_r1(run: dict[str, Any], run_dir: Path, preset: str, sets: list[str]) -> float:
    """attribute_only_r1 of colour on the run's corpus: the R@1 that colour alone gives."""
    return attribute_only_r1(Path(load_config(preset, sets).data.root), ("color",))


def cnn_probe(run: dict[str, Any], run_dir: Path, preset: str, sets: list[str]) -> dict[str, dict[str, float]] | None:
    """linear_probe of the CNN the finetuning started from ("start": random weights seeded as the run, or its
    init_checkpoint) and of the checkpoint chosen on validation ("chosen"); None when the run kept no checkpoint."""
    if (chosen := chosen_model(run, run_dir, preset, sets)) is None:
        return None
    cfg, model = chosen
    torch.manual_seed(cfg.train.seed)
    start, _ = build_model(cfg.model)
    train, test = event_clips(cfg, "train"), event_clips(cfg, "test")
    return {"start": linear_probe(start, train, test), "chosen": linear_probe(model, train, test)}


# ------------------------------------------------------------------------------------------------ figures of a corpus
def only_attribute(a: Events, b: Events) -> str:
    """The attribute name (synthetic.vocabulary.ATTRIBUTES order) in which two-event videos a and b alone differ, with their
    events aligned the way that differs in fewer slots; "" when they differ in more than one attribute or none."""
    names = list(ATTRIBUTES)
    aligned = min(([i for x, y in zip(a, bb) for i in range(len(names)) if x[i] != y[i]] for bb in (b, b[::-1])),
                  key=len)
    return names[aligned[0]] if aligned and len(set(aligned)) == 1 else ""


def one_attribute_pairs(root: Path) -> dict[str, int]:
    """How many (caption, wrong video) pairs of the corpus's test split differ in each attribute alone: the sample
    behind each grounding figure."""
    events = [[e.key() for e in v.events] for v in load_corpus(root).videos if v.split == "test"]
    kinds = [only_attribute(a, b) for a in events for b in events]
    return {a: kinds.count(a) for a in GROUNDED}


def attribute_only_r1(root: Path, attributes: tuple[str, ...]) -> float:
    """Test R@1 (percent) of a ranker that is perfect on ``attributes`` and blind to the rest: each caption's
    video ties with every test video whose events share those attributes (in either order), ranked at random."""
    test = [v for v in load_corpus(root).videos if v.split == "test"]
    keys = [tuple(sorted(tuple(getattr(e, a) for a in attributes) for e in v.events)) for v in test]
    return 100.0 * sum(1.0 / keys.count(k) for k in keys) / len(keys)


# ------------------------------------------------------------------------------------------------ filling a record
# record key -> what scores it from the run
DIAGNOSTICS = {"train_fit": train_fit, "grounding": grounding, "colour_only_r1": colour_only_r1, "cnn_probe": cnn_probe}


def fill_run_diagnostics(name: str, record: dict[str, Any], run_dir: Path, sets: list[str]) -> bool:
    """Add the DIAGNOSTICS missing from a record (its "preset", "curve", "test" and "test_step") from its run in
    run_dir, trained with the overrides ``sets``; False when none was added or the run there is another one (other
    test figures)."""
    missing = [key for key in DIAGNOSTICS if record.get(key) is None]
    if not missing:
        return False
    final = run_dir / "final_metrics.json"
    run = {"final_metrics": json.loads(final.read_text()) if final.exists() else None, "curve": record["curve"]}
    if test_metrics(run, run_dir, record["preset"], sets) != (record["test"], record["test_step"]):
        print(f"{name}: {run_dir} no longer holds this record's run; {', '.join(missing)} left out")
        return False
    for key in missing:
        record[key] = DIAGNOSTICS[key](run, run_dir, record["preset"], sets)
        print(f"{name}: {key} {record[key]}")
    return True


def fill_word_grounding(name: str, pretrain: dict[str, Any], pretrain_dir: Path, stills: Path) -> bool:
    """Add an image-text pretraining's missing word grounding (clipbert.training.probes.word_grounding on the stills it
    pretrained on) from its run in pretrain_dir; False when it was there already or the run there is another one."""
    if pretrain.get("word_grounding") is not None:
        return False
    final = pretrain_dir / "final_metrics.json"
    if not final.exists() or json.loads(final.read_text()) != pretrain.get("final_metrics"):
        print(f"{name}: {pretrain_dir} no longer holds this record's pretraining; word grounding left out")
        return False
    pretrain["word_grounding"] = word_grounding(pretrain_dir / "best", stills)
    print(f"{name}: pretraining word grounding {pretrain['word_grounding']}")
    return True
