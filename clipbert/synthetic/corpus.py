"""The synthetic video-text corpus on disk: synthesize_corpus writes it, load_corpus reads its metadata back.

Layout written by `synthesize_corpus(out_dir, ...)`:

    out_dir/videos/<video_id>.<mp4|webm|gif>
    out_dir/txt/retrieval_{train,val,test}.jsonl   {"clip_name", "caption", "sen_id"}
    out_dir/txt/mc_{train,val,test}.jsonl          {"qid", "clip_name", "options" (5 captions), "answer" (int)}
    out_dir/txt/qa_{train,val,test}.jsonl          {"video_id", "question", "answer", "answer_type"}
    out_dir/txt/qa_ans2label.json                  {answer: label} from the train answers
    out_dir/txt/vocab_words.txt                    every token the templates can produce, one per line
    out_dir/tokenizer/vocab.txt                    a word-piece vocabulary of those tokens (clipbert.data.text)
    out_dir/corpus.json                            generator options and per-video metadata

The same options and seed give the same bytes, whatever the number of worker processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipbert.synthetic.annotations import build_annotations, write_annotations
from clipbert.synthetic.encode import encode_all
from clipbert.synthetic.vocabulary import vocabulary_words
from clipbert.synthetic.world import DEFAULT_FPS, DEFAULT_SIZES, SPLITS, Event, SynthesisConfig, VideoSpec, draw_specs
from clipbert.data.text import write_vocab

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class CorpusInfo:
    """What synthesize_corpus wrote: the root folder, every video's spec, and the split membership."""

    root: Path
    config: SynthesisConfig
    videos: list[VideoSpec]
    splits: dict[str, list[str]] = field(default_factory=dict)  # split -> video ids
    seconds: float = 0.0  # wall time of the generation

    def video_path(self, video_id: str) -> Path:
        """Path of one encoded video."""
        return self.root / "videos" / self._by_id()[video_id].filename

    def annotation_path(self, task: str, split: str) -> Path:
        """Path of txt/<task>_<split>.jsonl for task in retrieval | mc | qa."""
        return self.root / "txt" / f"{task}_{split}.jsonl"

    @property
    def ans2label_path(self) -> Path:
        """Path of the QA answer vocabulary."""
        return self.root / "txt" / "qa_ans2label.json"

    @property
    def vocab_path(self) -> Path:
        """Path of the word list for tokenizer building."""
        return self.root / "txt" / "vocab_words.txt"

    def _by_id(self) -> dict[str, VideoSpec]:
        return {v.video_id: v for v in self.videos}


def load_corpus(root: str | Path) -> CorpusInfo:
    """Read back what synthesize_corpus wrote (from root/corpus.json) without touching the videos."""
    root = Path(root)
    doc = json.loads((root / "corpus.json").read_text())
    opts = doc["options"]
    opts.update(sizes=tuple(tuple(s) for s in opts["sizes"]), fps_choices=tuple(opts["fps_choices"]),
                mc_changes=tuple(opts["mc_changes"]))
    cfg = SynthesisConfig(**opts)
    fields = {f.name for f in dataclasses.fields(VideoSpec)}
    videos = [VideoSpec(**{**{k: v for k, v in meta.items() if k in fields},
                           "events": tuple(Event(**e) for e in meta["events"])}) for meta in doc["videos"]]
    splits = {s: [v.video_id for v in videos if v.split == s] for s in SPLITS}
    return CorpusInfo(root=root, config=cfg, videos=videos, splits=splits)


def _write_corpus_json(root: Path, cfg: SynthesisConfig, specs: Sequence[VideoSpec]) -> None:
    doc = {
        "format_version": FORMAT_VERSION,
        "options": dataclasses.asdict(cfg),
        "split_counts": cfg.split_counts(),
        "videos": [s.to_json() for s in specs],
    }
    (root / "corpus.json").write_text(json.dumps(doc, indent=1) + "\n")


def prepare_output(root: Path, media: str, index: str, overwrite: bool, what: str = "a corpus") -> None:
    """Make an empty ``root/media`` folder; an earlier corpus there (its media, txt/ and ``index`` file) is refused
    with FileExistsError, or removed when ``overwrite``."""
    existing = [p for p in (root / media, root / "txt", root / index) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{root} already holds {what} ({existing[0].name}); pass overwrite=True")
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (root / media).mkdir(parents=True)


def synthesize_corpus(out_dir: str | Path, *, n_videos: int, seed: int = 0, mixed_formats: bool = False,
                      val_videos: int | None = None, test_videos: int | None = None,
                      min_duration: float = 2.0, max_duration: float = 12.0,
                      sizes: Sequence[tuple[int, int]] | None = None, fps_choices: Sequence[int] | None = None,
                      workers: int = 1, overwrite: bool = False, **options) -> CorpusInfo:
    """Generate, encode and annotate a synthetic two-event video corpus.

    Args:
        out_dir: output folder (created); see the module docstring for its layout.
        n_videos: videos in all splits together.
        seed: seed of every random choice; the same arguments give the same bytes.
        mixed_formats: make ~15% GIF and ~15% VP9 webm videos besides H.264 mp4.
        val_videos, test_videos: explicit split sizes; None uses val_fraction/test_fraction (default 10% each).
        min_duration, max_duration: video duration range in seconds.
        sizes: (width, height) choices in pixels, even numbers; default DEFAULT_SIZES (160x120 .. 480x360,
            landscape, portrait and square).
        fps_choices: frame rate choices; default DEFAULT_FPS (10, 15, 24, 25, 30).
        workers: encoding processes (the output does not depend on it).
        overwrite: replace a corpus already in out_dir instead of raising FileExistsError.
        **options: any other SynthesisConfig field (val_fraction, qa_per_video, mc_changes, paraphrases, ...).

    Returns:
        CorpusInfo with the root, the config, every VideoSpec and the split membership.
    """
    start = time.perf_counter()
    cfg = SynthesisConfig(
        n_videos=n_videos, seed=seed, mixed_formats=mixed_formats, val_videos=val_videos, test_videos=test_videos,
        min_duration=min_duration, max_duration=max_duration,
        sizes=tuple(tuple(int(v) for v in s) for s in (sizes or DEFAULT_SIZES)),
        fps_choices=tuple(int(f) for f in (fps_choices or DEFAULT_FPS)), **options)
    cfg.validate()
    root = Path(out_dir)
    prepare_output(root, "videos", "corpus.json", overwrite)
    rng = np.random.default_rng(seed)
    specs = draw_specs(cfg, rng)
    files = build_annotations(specs, cfg, rng)
    encode_all(specs, root / "videos", workers)
    write_annotations(root, files)
    write_vocab(vocabulary_words(), root / "tokenizer")
    _write_corpus_json(root, cfg, specs)
    splits = {s: [v.video_id for v in specs if v.split == s] for s in SPLITS}
    info = CorpusInfo(root=root, config=cfg, videos=list(specs), splits=splits,
                      seconds=time.perf_counter() - start)
    logger.info("synthesized %d videos (%s) in %s in %.1f s", len(specs),
                ", ".join(f"{s} {len(v)}" for s, v in splits.items()), root, info.seconds)
    return info
