"""Annotation datasets: ClipBERT txt_db jsonl readers into one row schema, answer vocabularies and retrieval negatives.

Every reader returns rows with the same fixed keys (`Row`, a `TypedDict`, so rows are plain dicts that
Ray Data's `from_items` takes as they are):

- `example_id` (int): sequential id in load order of the kept rows (0, 1, ...), as the original assigns.
- `video_id` (str): the frame-store key of the video (`clip_name` / `video_id` / `gif_name`).
- `texts` (list[str]): the K text inputs scored against the video.
    retrieval: `[caption]` (DiDeMo / ActivityNet: the whole paragraph is one caption);
    multiple choice: one per option, `question + " " + option` when the format has a question, else the option;
    open-ended QA: `[question]`.
- `label` (int):
    retrieval rows as read: 1 (the ITM "match" class: the caption describes the video);
    multiple choice: the index of the correct option in `texts`;
    open-ended QA: the answer's class from `ans2label`, or -1 when the answer is not in the vocabulary
    (or no vocabulary was given); -1 counts as wrong at evaluation and must be ignored by the loss.
  After `add_itm_negatives`, retrieval rows hold `texts = [positive, negative, ...]` and `label = 0`,
  the index of the positive caption, the same "index of the right text" convention as multiple choice.
  The per-text ITM targets of such a row are `[1] + [0] * neg_size`.
- `answer_type` (str): `what`/`who`/... (MSRVTT-QA), `object`/`number`/... (TGIF frameQA), else "".
- `answer` (str): the answer string (QA), the correct option's text (multiple choice), else "".

Supported formats (REFERENCE.md 3.2), by name: msrvtt_ret, didemo_ret, anet_ret, msrvtt_qa, msrvtt_mc,
tgif_qa_action, tgif_qa_transition, tgif_qa_frameqa, and the pretraining captions coco_captions (`coco_id`,
`caption`) and vg_captions (`vg_id`, `caption`), whose image ids may be ints; `detect_format` picks one from
the fields of a line.
A malformed line (bad JSON, a missing field, a wrong type such as a number as caption, an empty text) or an
unknown video id is skipped and counted in a `LoadReport`; only a file that leaves no row at all raises
`ValueError`. Texts of any length are kept: tokenisation truncates them to `max_txt_len`.
"""

from __future__ import annotations

import collections
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, Mapping, Sequence, TypedDict

import numpy as np

logger = logging.getLogger(__name__)

MAX_SHOWN_PROBLEMS = 5  # offending lines quoted in a LoadReport


class Row(TypedDict):
    """One annotation example; see the module docstring for the meaning of each key."""

    example_id: int
    video_id: str
    texts: list[str]
    label: int
    answer_type: str
    answer: str


ROW_KEYS: tuple[str, ...] = tuple(Row.__annotations__)


@dataclass(frozen=True)
class AnnotationFormat:
    """How one jsonl annotation format maps onto `Row`."""

    name: str  # canonical format name, e.g. "msrvtt_qa"
    kind: str  # "retrieval" | "mc" (multiple choice) | "qa" (open-ended, answer vocabulary)
    video_key: str  # field holding the video id
    question_key: str | None = None  # question field (mc: prefixed to every option; qa: required)
    num_options: int = 5  # options per multiple-choice example
    min_num_labels: int = 0  # the original pads the QA head to at least this many classes
    join_caption_list: bool = False  # paragraph formats: a list of sentences is joined into one caption
    int_ids: bool = False  # the id field may be an int (COCO / VG image ids), read as its decimal string

    def required_fields(self) -> tuple[str, ...]:
        """Fields a line of this format must have."""
        by_kind = {"retrieval": ("caption",), "mc": ("options", "answer"), "qa": ("answer",)}
        question = (self.question_key,) if self.question_key else ()
        return (self.video_key, *question, *by_kind[self.kind])


FORMATS: dict[str, AnnotationFormat] = {
    f.name: f
    for f in (
        AnnotationFormat("msrvtt_ret", "retrieval", "clip_name"),
        AnnotationFormat("didemo_ret", "retrieval", "clip_name", join_caption_list=True),
        AnnotationFormat("anet_ret", "retrieval", "clip_name", join_caption_list=True),
        AnnotationFormat("msrvtt_qa", "qa", "video_id", "question", min_num_labels=1500),
        AnnotationFormat("msrvtt_mc", "mc", "clip_name"),
        AnnotationFormat("tgif_qa_action", "mc", "gif_name", "question"),
        AnnotationFormat("tgif_qa_transition", "mc", "gif_name", "question"),
        AnnotationFormat("tgif_qa_frameqa", "qa", "gif_name", "question", min_num_labels=1540),
        AnnotationFormat("coco_captions", "retrieval", "coco_id", int_ids=True),  # image-text pretraining
        AnnotationFormat("vg_captions", "retrieval", "vg_id", int_ids=True),
    )
}

FORMAT_ALIASES: dict[str, str] = {
    "retrieval": "msrvtt_ret",
    "msrvtt_retrieval": "msrvtt_ret",
    "didemo_retrieval": "didemo_ret",
    "anet_retrieval": "anet_ret",
    "msrvtt_retrieval_mc": "msrvtt_mc",
    "tgif_action": "tgif_qa_action",
    "tgif_transition": "tgif_qa_transition",
    "tgif_frameqa": "tgif_qa_frameqa",
    "frameqa": "tgif_qa_frameqa",
    "coco": "coco_captions",
    "vg": "vg_captions",
}


def get_format(name: str) -> AnnotationFormat:
    """Look up a format by canonical name or alias; raises ValueError listing the known names."""
    key = FORMAT_ALIASES.get(name.lower(), name.lower())
    if key not in FORMATS:
        known = ", ".join(sorted([*FORMATS, *FORMAT_ALIASES]))
        raise ValueError(f"unknown annotation format {name!r}; known: {known}")
    return FORMATS[key]


def detect_format(fields: Iterable[str]) -> AnnotationFormat | None:
    """The format whose required fields are all in `fields`, preferring the most specific; None if none fits."""
    present = set(fields)
    fitting = [f for f in FORMATS.values() if set(f.required_fields()) <= present]
    return max(fitting, key=lambda f: len(f.required_fields()), default=None)


# ----------------------------------------------------------------------------------------- load report
@dataclass
class LoadReport:
    """What a reader kept and skipped: counts per reason and the first few offending lines."""

    path: str
    format_name: str
    num_lines: int = 0  # non-blank lines read
    num_rows: int = 0  # rows kept
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    problems: list[str] = field(default_factory=list)  # first few "file:line: reason"

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def add_problem(self, line_no: int, reason: str, detail: str) -> None:
        """Count one skipped line under `reason`, quoting it if it is among the first few."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.problems) < MAX_SHOWN_PROBLEMS:
            self.problems.append(f"{self.path}:{line_no}: {detail}")

    def summary(self) -> str:
        """One paragraph a person can read: kept/skipped counts per reason, then the quoted lines."""
        head = f"{self.path} ({self.format_name}): kept {self.num_rows} of {self.num_lines} lines"
        if not self.skipped:
            return head
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        return "\n  ".join([f"{head}; skipped {self.num_skipped} ({reasons})", *self.problems])


class _LineError(Exception):
    """A line that cannot become a row: `reason` is the count key, the message the detail shown."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# ------------------------------------------------------------------------------------- line parsing
def _field(obj: Mapping[str, Any], key: str, kind: type, kind_name: str) -> Any:
    """Return obj[key] if present and of type `kind` (bool is not an int here)."""
    if key not in obj:
        raise _LineError("missing_field", f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _LineError("wrong_type", f"field {key!r} should be {kind_name}, got {type(value).__name__}")
    return value


def _caption(obj: Mapping[str, Any], fmt: AnnotationFormat) -> str:
    """The caption string; paragraph formats also accept a list of sentences, joined with spaces."""
    value = obj.get("caption")
    if fmt.join_caption_list and isinstance(value, list) and all(isinstance(s, str) for s in value):
        return " ".join(value)
    return _field(obj, "caption", str, "a string")


def _options(obj: Mapping[str, Any], fmt: AnnotationFormat) -> list[str]:
    """The option strings, checking their count and type."""
    options = _field(obj, "options", list, "a list")
    if len(options) != fmt.num_options:
        raise _LineError("wrong_option_count", f"expected {fmt.num_options} options, got {len(options)}")
    if not all(isinstance(o, str) for o in options):
        raise _LineError("wrong_type", "field 'options' should hold strings")
    return options


def _parse_mc(obj: Mapping[str, Any], fmt: AnnotationFormat) -> tuple[list[str], int, str, str]:
    options = _options(obj, fmt)
    answer = _field(obj, "answer", int, "an int")
    if not 0 <= answer < len(options):
        raise _LineError("answer_out_of_range", f"answer {answer} is not an index into {len(options)} options")
    question = _field(obj, fmt.question_key, str, "a string") if fmt.question_key else ""
    texts = [f"{question} {o}" if question else o for o in options]
    return texts, answer, "", options[answer]


def _parse_qa(
    obj: Mapping[str, Any], fmt: AnnotationFormat, ans2label: Mapping[str, int] | None
) -> tuple[list[str], int, str, str]:
    question = _field(obj, fmt.question_key or "question", str, "a string")
    answer = _field(obj, "answer", str, "a string")
    answer_type = _field(obj, "answer_type", str, "a string") if "answer_type" in obj else ""
    label = ans2label.get(answer, -1) if ans2label is not None else -1
    return [question], label, answer_type, answer


def _parse_line(
    text: str, fmt: AnnotationFormat, ans2label: Mapping[str, int] | None
) -> tuple[str, list[str], int, str, str]:
    """Parse one jsonl line into (video_id, texts, label, answer_type, answer); raises _LineError."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _LineError("bad_json", f"bad JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise _LineError("wrong_type", f"line should be a JSON object, got {type(obj).__name__}")
    if fmt.int_ids and isinstance(obj.get(fmt.video_key), int) and not isinstance(obj[fmt.video_key], bool):
        video_id = str(obj[fmt.video_key])
    else:
        video_id = _field(obj, fmt.video_key, str, "a string")
    if fmt.kind == "retrieval":
        parsed = video_id, [_caption(obj, fmt)], 1, "", ""
    elif fmt.kind == "mc":
        parsed = (video_id, *_parse_mc(obj, fmt))
    else:
        parsed = (video_id, *_parse_qa(obj, fmt, ans2label))
    if not all(t.strip() for t in parsed[1]):
        raise _LineError("empty_text", "empty text (caption, question or option)")
    return parsed


# ------------------------------------------------------------------------------------------ reading
def _read_lines(path: str) -> list[str]:
    """All lines of a local file or of a pyarrow-supported URI (s3://, gs://, ...)."""
    if "://" not in path:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    with fs.open_input_stream(inner) as f:
        return f.read().decode("utf-8").splitlines()


def _format_for(lines: Sequence[str], task: str | None, path: str) -> AnnotationFormat:
    """The named format, or the one detected from the first JSON-object line that fits any format."""
    if task is not None and task.lower() not in ("auto", "detect"):
        return get_format(task)
    for text in lines:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and (fmt := detect_format(obj)) is not None:
            return fmt
    raise ValueError(f"{path}: cannot detect the annotation format: no line has the fields of any of {sorted(FORMATS)}")


def load_annotations(
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    known_video_ids: Collection[str] | None = None,
    ans2label: Mapping[str, int] | None = None,
) -> tuple[list[Row], LoadReport]:
    """Read a ClipBERT jsonl annotation file into rows.

    Args:
        path: local jsonl file (or a URI pyarrow can open), one JSON object per line; blank lines are ignored.
        task: format name or alias (see `FORMATS`); None or "auto" detects it from the fields.
        known_video_ids: ids present in the frame store (its ok ids); rows of other videos are skipped.
        ans2label: answer vocabulary for open-ended QA; without it QA labels are -1 (see `apply_ans2label`).

    Returns:
        (rows, report): the kept rows with `example_id` 0..n-1 in file order, and what was skipped.

    Raises:
        ValueError: no row is left (the message names the file and the reasons), or the format is unknown.
    """
    path = os.fspath(path)
    lines = _read_lines(path)
    fmt = _format_for(lines, task, path)
    report = LoadReport(path=path, format_name=fmt.name)
    rows: list[Row] = []
    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        report.num_lines += 1
        try:
            video_id, texts, label, answer_type, answer = _parse_line(text, fmt, ans2label)
        except _LineError as e:
            report.add_problem(line_no, e.reason, str(e))
            continue
        if known_video_ids is not None and video_id not in known_video_ids:
            report.add_problem(line_no, "unknown_video", f"video id {video_id!r} is not in the frame store")
            continue
        rows.append(Row(example_id=len(rows), video_id=video_id, texts=texts, label=label,
                        answer_type=answer_type, answer=answer))
    report.num_rows = len(rows)
    _log_report(report)
    return rows, report


def _log_report(report: LoadReport) -> None:
    """Log the summary; raise when nothing is left."""
    if report.num_rows == 0:
        raise ValueError(f"no usable annotation rows: {report.summary()}")
    if report.num_skipped:
        logger.warning("%s", report.summary())
    else:
        logger.info("%s", report.summary())


# ------------------------------------------------------------------------------- answer vocabulary
def load_ans2label(path: str | os.PathLike[str]) -> dict[str, int]:
    """Read an answer vocabulary JSON object {answer: label}; labels must be distinct ints >= 0."""
    with open(os.fspath(path), encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
        raise ValueError(f"{os.fspath(path)}: an answer vocabulary must be a JSON object of answer -> int label")
    if len(set(data.values())) != len(data) or min(data.values(), default=0) < 0:
        raise ValueError(f"{os.fspath(path)}: answer labels must be distinct and >= 0")
    return {str(k): v for k, v in data.items()}


def save_ans2label(ans2label: Mapping[str, int], path: str | os.PathLike[str]) -> None:
    """Write an answer vocabulary as a JSON object (readable by `load_ans2label`)."""
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        json.dump(dict(ans2label), f, ensure_ascii=False, indent=0)


def build_ans2label(rows: Iterable[Row], min_count: int = 1) -> dict[str, int]:
    """Vocabulary of the answers seen at least `min_count` times, labelled by descending frequency (ties by text)."""
    counts = collections.Counter(r["answer"] for r in rows if r["answer"])
    kept = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return {a: i for i, a in enumerate(kept)}


def apply_ans2label(rows: Iterable[Row], ans2label: Mapping[str, int]) -> list[Row]:
    """Copies of open-ended QA rows labelled with the vocabulary; unknown answers get -1."""
    return [Row(**{**r, "label": ans2label.get(r["answer"], -1)}) for r in rows]


def num_answer_labels(ans2label: Mapping[str, int], task: str | None = None) -> int:
    """Classes of the QA head: the vocabulary size, padded to the original's minimum for `task` (1500 / 1540)."""
    size = max(ans2label.values(), default=-1) + 1
    return max(size, get_format(task).min_num_labels if task else 0)


# ------------------------------------------------------------------------------ retrieval negatives
def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator for one epoch's random draws: the same (seed, epoch) always gives the same stream."""
    return np.random.default_rng([seed, epoch])


def _other_video_indices(codes: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """For each row i, k row indices drawn uniformly among rows whose video code differs from codes[i]."""
    n = len(codes)
    idx = rng.integers(0, n, size=(n, k))  # (n, k)
    same = codes[idx] == codes[:, None]  # (n, k) draws that hit the row's own video
    while same.any():
        idx[same] = rng.integers(0, n, size=int(same.sum()))
        same = codes[idx] == codes[:, None]
    return idx


def add_itm_negatives(rows: Sequence[Row], rng: np.random.Generator, neg_size: int = 1) -> list[Row]:
    """Retrieval rows with `neg_size` negative captions each, as the original's ITM training data.

    Each negative is the caption of a uniformly drawn row of a different video (so videos with more
    captions are drawn more often, as in the original). Call once per epoch with `epoch_rng(seed, epoch)`
    for fresh negatives every epoch.

    Returns:
        New rows with `texts = [positive, negative_1, ...]` and `label = 0` (index of the positive);
        the input rows are not changed.
    """
    if any(len(r["texts"]) != 1 for r in rows):
        raise ValueError("add_itm_negatives expects retrieval rows with exactly one caption each")
    _, codes = np.unique([r["video_id"] for r in rows], return_inverse=True)  # (n,) video code per row
    if len(rows) == 0 or codes.max() == 0:
        raise ValueError("retrieval negatives need captions of at least two different videos")
    idx = _other_video_indices(codes, rng, neg_size)  # (n, neg_size)
    return [
        Row(**{**r, "texts": [r["texts"][0], *(rows[j]["texts"][0] for j in idx[i])], "label": 0})
        for i, r in enumerate(rows)
    ]


def retrieval_eval_lists(rows: Sequence[Row]) -> tuple[list[str], list[str], np.ndarray]:
    """Inputs of a text x video score matrix.

    Returns:
        (video_ids, captions, gt): the unique video ids in first-appearance order (the columns), one caption
        per row (the matrix rows), and for each caption the column index of its video, int64 (num_captions,).
    """
    video_ids = list(dict.fromkeys(r["video_id"] for r in rows))
    column = {v: i for i, v in enumerate(video_ids)}
    captions = [r["texts"][0] for r in rows]
    gt = np.array([column[r["video_id"]] for r in rows], dtype=np.int64)  # (num_captions,)
    return video_ids, captions, gt


def _listed_video(text: str) -> str | None:
    """The video a list line names: the line itself, or a jsonl object's clip_name / video_id (None if neither)."""
    if not text.startswith("{"):
        return text
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    video = obj.get("clip_name", obj.get("video_id")) if isinstance(obj, dict) else None
    return None if video is None else str(video)


def read_video_list(path: str | os.PathLike[str]) -> list[str]:
    """Video ids from a list file (one id per line, '#' comments) or a jsonl annotation file (its ``clip_name`` or
    ``video_id`` fields), in first-appearance order without repeats. Lines that name no video are reported in one
    warning; a file that names none raises ValueError naming it."""
    path = os.fspath(path)
    ids, bad = [], []
    for line_no, text in enumerate(_read_lines(path), start=1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        video = _listed_video(text)
        if video is None:
            bad.append(line_no)
        else:
            ids.append(video)
    if bad:
        logger.warning("%s: %d lines name no video (lines %s)", path, len(bad), bad[:5])
    if not ids:
        raise ValueError(f"{path} names no video (one id per line, or jsonl with clip_name / video_id)")
    return list(dict.fromkeys(ids))
