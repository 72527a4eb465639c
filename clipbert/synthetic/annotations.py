"""ClipBERT-format annotations of the synthetic videos: retrieval captions, multiple-choice rows and QA questions."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from clipbert.synthetic.vocabulary import ATTRIBUTES, QUESTION_TEMPLATES, caption, vocabulary_words
from clipbert.synthetic.world import SPLITS, Event, SynthesisConfig, VideoSpec, unordered_key


def _distractor(events: tuple[Event, Event], n_changes: int, rng: np.random.Generator) -> tuple[Event, Event]:
    """The events with n_changes (event, attribute) slots changed; the two events stay distinct per attribute."""
    new = [dataclasses.asdict(events[0]), dataclasses.asdict(events[1])]
    slots = [(ev, attr) for ev in (0, 1) for attr in ATTRIBUTES]
    for k in rng.choice(len(slots), size=n_changes, replace=False):
        ev, attr = slots[int(k)]
        banned = {getattr(events[ev], attr), new[1 - ev][attr]}
        allowed = [v for v in ATTRIBUTES[attr] if v not in banned]
        new[ev][attr] = allowed[rng.integers(len(allowed))]
    return Event(**new[0]), Event(**new[1])


def mc_example(spec: VideoSpec, qid: int, cfg: SynthesisConfig, rng: np.random.Generator) -> dict:
    """One MSRVTT-MC row: the true caption among 4 distractors that differ in some attribute, not only order."""
    keys = {unordered_key(spec.events)}
    options = [caption(spec.events)]
    lo, hi = cfg.mc_changes
    while len(options) < 5:
        fake = _distractor(spec.events, int(rng.integers(lo, hi + 1)), rng)
        if unordered_key(fake) not in keys:
            keys.add(unordered_key(fake))
            options.append(caption(fake))
    answer = int(rng.integers(5))
    options[0], options[answer] = options[answer], options[0]
    return {"qid": qid, "clip_name": spec.video_id, "options": options, "answer": answer}


def qa_examples(spec: VideoSpec, cfg: SynthesisConfig, rng: np.random.Generator) -> list[dict]:
    """Open-ended questions about single attributes, each naming its event by the other attributes."""
    slots = [(ev, kind) for ev in (0, 1) for kind in ATTRIBUTES]
    rows = []
    for k in sorted(rng.choice(len(slots), size=cfg.qa_per_video, replace=False)):
        ev, kind = slots[int(k)]
        templates = QUESTION_TEMPLATES[kind]
        template = templates[rng.integers(len(templates))]
        event = spec.events[ev]
        question = template.format(color=event.color, shape=event.shape, direction=event.direction)
        rows.append({"video_id": spec.video_id, "question": question, "answer": getattr(event, kind),
                     "answer_type": kind})
    return rows


def build_annotations(specs: Sequence[VideoSpec], cfg: SynthesisConfig,
                      rng: np.random.Generator) -> dict[str, list[dict]]:
    """Rows of every annotation file, keyed by file stem (e.g. "retrieval_train")."""
    files: dict[str, list[dict]] = {f"{task}_{s}": [] for task in ("retrieval", "mc", "qa") for s in SPLITS}
    for spec in specs:
        ret = files[f"retrieval_{spec.split}"]
        ret.append({"clip_name": spec.video_id, "caption": caption(spec.events), "sen_id": len(ret)})
        if cfg.paraphrases and spec.split == "train":
            ret.append({"clip_name": spec.video_id, "caption": caption(spec.events, paraphrase=True),
                        "sen_id": len(ret)})
        mc = files[f"mc_{spec.split}"]
        mc.append(mc_example(spec, len(mc), cfg, rng))
        files[f"qa_{spec.split}"].extend(qa_examples(spec, cfg, rng))
    return files


def answer_vocabulary(qa_rows: Iterable[dict]) -> dict[str, int]:
    """answer -> label over the given QA rows, labels in sorted answer order."""
    return {a: i for i, a in enumerate(sorted({r["answer"] for r in qa_rows}))}


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def write_annotations(root: Path, files: dict[str, list[dict]]) -> None:
    """Write the jsonl files, the answer vocabulary and the word list under root/txt."""
    txt = root / "txt"
    txt.mkdir(parents=True, exist_ok=True)
    for stem, rows in files.items():
        _write_jsonl(txt / f"{stem}.jsonl", rows)
    (txt / "qa_ans2label.json").write_text(json.dumps(answer_vocabulary(files["qa_train"]), indent=1) + "\n")
    (txt / "vocab_words.txt").write_text("\n".join(vocabulary_words()) + "\n")
