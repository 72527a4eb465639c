"""Synthetic video-text corpus: two-event moving-shape videos encoded with PyAV, plus ClipBERT-format annotations.

Each video shows two events in sequence ("a red circle moves left, then a blue square moves up"):
event 1 fills the first half of the frames, event 2 the second half, and each shape is visible only
during its own event. Every frame draws a fading trail behind the moving shape, so the motion
direction is visible in a single frame (ClipBERT mean-pools the frames of a clip and has no temporal
position embedding). The two events of a video differ in colour, shape and direction, so every QA
question names one event unambiguously; within a split no two videos share the same unordered pair of
events, so a caption identifies its video even without using the event order.

Layout written by `synthesize_corpus(out_dir, ...)`:

    out_dir/videos/<video_id>.<mp4|webm|gif>
    out_dir/txt/retrieval_{train,val,test}.jsonl   {"clip_name", "caption", "sen_id"}
    out_dir/txt/mc_{train,val,test}.jsonl          {"qid", "clip_name", "options" (5 captions), "answer" (int)}
    out_dir/txt/qa_{train,val,test}.jsonl          {"video_id", "question", "answer", "answer_type"}
    out_dir/txt/qa_ans2label.json                  {answer: label} from the train answers
    out_dir/txt/vocab_words.txt                    every token the templates can produce, one per line
    out_dir/tokenizer/vocab.txt                    a word-piece vocabulary of those tokens (clipbert.text)
    out_dir/corpus.json                            generator options and per-video metadata

The same options and seed give the same bytes, whatever the number of worker processes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import av
import numpy as np

from clipbert.text import write_vocab

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "white": (235, 235, 235),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "direction": tuple(DIRECTIONS),
}

DEFAULT_SIZES: tuple[tuple[int, int], ...] = (  # (width, height) in pixels
    (160, 120), (240, 180), (320, 240), (480, 360),  # 4:3
    (320, 180), (480, 270),  # 16:9
    (180, 320), (270, 480), (360, 480),  # portrait
    (240, 240), (360, 360),  # square
)
DEFAULT_FPS: tuple[int, ...] = (10, 15, 24, 25, 30)
GIF_FPS: tuple[int, ...] = (10, 20, 25, 50)  # GIF frame delays are whole centiseconds

TRAIL_ALPHAS: tuple[float, ...] = (0.5, 0.3, 0.15)  # opacity of the trail copies, nearest first
TRAIL_STEP = 0.3  # distance between trail copies, in shape sizes
SUPERSAMPLE = 4  # anti-aliasing factor of the shape masks
GIF_LEVELS = 127  # palette entries per event colour (blend levels between background and colour)

CAPTION_TEMPLATE = "a {c0} {s0} moves {d0}, then a {c1} {s1} moves {d1}"
PARAPHRASE_TEMPLATE = "first a {c0} {s0} goes {d0}, and after that a {c1} {s1} goes {d1}"
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {  # answer_type -> templates over the other attributes
    "color": (
        "what color is the {shape}?",
        "what color is the shape that moves {direction}?",
        "what color is the {shape} that moves {direction}?",
    ),
    "shape": (
        "what shape is {color}?",
        "what shape moves {direction}?",
        "which shape is {color} and moves {direction}?",
    ),
    "direction": (
        "which way does the {color} shape move?",
        "which way does the {shape} move?",
        "which way does the {color} {shape} move?",
    ),
}

# Captions of stills (clipbert.synthetic_images): what one picture shows, without time. {c}/{s}/{d} describe one
# shape, {edge} the image edge nearest to it; the *_PAIR templates describe two shapes.
STILL_TEMPLATES: tuple[str, ...] = (
    "a {c} {s} moves {d}",
    "a {c} {s} moving {d}",
    "the {s} is {c} and goes {d}",
    "a {c} {s} near the {edge} edge",
    "a {c} {s}",
)
STILL_PAIR_TEMPLATES: tuple[str, ...] = (
    "a {c0} {s0} moves {d0} and a {c1} {s1} moves {d1}",
    "a {c0} {s0} and a {c1} {s1}",
    "a {c0} {s0} moves {d0} next to a {c1} {s1}",
)
EDGES: tuple[str, ...] = ("top", "bottom", "left", "right")

CODEC_ALIASES = {
    "h264": "libx264", "x264": "libx264", "vp9": "libvpx-vp9", "av1": "libsvtav1", "svtav1": "libsvtav1",
}
EXTENSION_CODECS = {  # container extension -> default encoder
    "mp4": "libx264", "mkv": "libx264", "mov": "libx264", "webm": "libvpx-vp9", "gif": "gif", "avi": "mpeg4",
}
# Encoder defaults, all single-threaded. x264's MB-tree rate control reads uninitialised lookahead memory,
# which makes its bytes depend on the heap contents; mbtree=0 keeps same frames -> same bytes.
ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "veryfast", "crf": "23", "x264-params": "mbtree=0"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0", "row-mt": "0"},
    "libsvtav1": {"preset": "10", "crf": "35", "svtav1-params": "lp=1"},
    "mpeg4": {"qscale": "4"},
    "gif": {},
}


@dataclass(frozen=True)
class Event:
    """One shape crossing the frame: what it looks like and which way it moves."""

    color: str  # key of COLORS
    shape: str  # one of SHAPES
    direction: str  # key of DIRECTIONS
    lane: float = 0.5  # position across the motion axis, 0..1 of the free range

    def key(self) -> tuple[str, str, str]:
        """The (colour, shape, direction) triple that captions can tell apart."""
        return (self.color, self.shape, self.direction)


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render and encode one video, and what its annotations describe."""

    video_id: str  # file stem, e.g. "video00042"
    split: str  # train | val | test
    ext: str  # container: mp4 | webm | gif
    width: int  # pixels
    height: int  # pixels
    fps: int  # frames per second
    num_frames: int  # total frames; event 0 fills [0, num_frames // 2), event 1 the rest
    events: tuple[Event, Event]
    background: int  # grey level of the plain background, 0..255
    shape_size: int  # side of the shape's bounding box, pixels

    @property
    def duration_s(self) -> float:
        """Playback duration in seconds."""
        return self.num_frames / self.fps

    @property
    def filename(self) -> str:
        """File name inside the videos/ folder."""
        return f"{self.video_id}.{self.ext}"

    @property
    def codec(self) -> str:
        """Encoder used for this video."""
        return EXTENSION_CODECS[self.ext]

    def event_frames(self) -> list[tuple[int, int]]:
        """[start, end) frame range of each event."""
        half = self.num_frames // 2
        return [(0, half), (half, self.num_frames)]

    def to_json(self) -> dict:
        """Metadata for corpus.json."""
        d = dataclasses.asdict(self)
        d.update(duration_s=self.duration_s, filename=self.filename, codec=self.codec,
                 event_frames=self.event_frames(), caption=caption(self.events))
        return d


@dataclass(frozen=True)
class SynthesisConfig:
    """Options of the corpus generator; together with the seed they fix every output byte."""

    n_videos: int  # videos in all splits together
    seed: int = 0  # seed of the one np.random.Generator behind every random choice
    mixed_formats: bool = False  # also write GIF and VP9 webm videos, not only H.264 mp4
    gif_fraction: float = 0.15  # share of GIF videos with mixed_formats
    webm_fraction: float = 0.15  # share of VP9 webm videos with mixed_formats
    val_videos: int | None = None  # explicit val count (overrides val_fraction)
    test_videos: int | None = None  # explicit test count (overrides test_fraction)
    val_fraction: float = 0.1  # share of val videos when val_videos is None
    test_fraction: float = 0.1  # share of test videos when test_videos is None
    min_duration: float = 2.0  # seconds
    max_duration: float = 12.0  # seconds
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES  # (width, height) choices, even numbers for H.264
    fps_choices: tuple[int, ...] = DEFAULT_FPS  # frames per second choices (GIF uses those in GIF_FPS, else 10)
    min_shape_frac: float = 0.25  # shape size as a fraction of the short side, lower bound
    max_shape_frac: float = 1 / 3  # shape size as a fraction of the short side, upper bound
    qa_per_video: int = 3  # open-ended questions per video, 1..6 (one per event and answer type at most)
    mc_changes: tuple[int, int] = (1, 6)  # min, max (event, attribute) slots changed from the truth per MC distractor
    paraphrases: bool = False  # add a second, paraphrased caption per train video to retrieval_train

    def split_counts(self) -> dict[str, int]:
        """Number of videos in each split."""
        n = self.n_videos
        n_val = self.val_videos if self.val_videos is not None else _fraction_count(n, self.val_fraction)
        n_test = self.test_videos if self.test_videos is not None else _fraction_count(n, self.test_fraction)
        if n_val < 0 or n_test < 0 or n_val + n_test >= n:
            raise ValueError(f"split sizes val={n_val} test={n_test} leave no train videos out of {n}")
        return {"train": n - n_val - n_test, "val": n_val, "test": n_test}

    def validate(self) -> None:
        """Raise ValueError for options that cannot produce a corpus."""
        if self.n_videos < 1:
            raise ValueError(f"n_videos must be >= 1, got {self.n_videos}")
        if not 0 < self.min_duration <= self.max_duration:
            raise ValueError(f"need 0 < min_duration <= max_duration, got {self.min_duration}, {self.max_duration}")
        if not self.sizes or any(w < 16 or h < 16 or w % 2 or h % 2 for w, h in self.sizes):
            raise ValueError(f"sizes must be even and at least 16x16, got {self.sizes}")
        if not self.fps_choices or any(f <= 0 for f in self.fps_choices):
            raise ValueError(f"fps_choices must be positive, got {self.fps_choices}")
        if not 1 <= self.qa_per_video <= 6:
            raise ValueError(f"qa_per_video must be in 1..6, got {self.qa_per_video}")
        if not 1 <= self.mc_changes[0] <= self.mc_changes[1] <= 6:
            raise ValueError(f"mc_changes must satisfy 1 <= min <= max <= 6, got {self.mc_changes}")
        largest = max(self.split_counts().values())
        if largest > max_videos_per_split():
            raise ValueError(f"a split of {largest} videos exceeds the {max_videos_per_split()} distinct "
                             "unordered event pairs; use fewer videos per split")


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


def _fraction_count(n: int, fraction: float) -> int:
    if fraction <= 0:
        return 0
    return max(1, round(n * fraction)) if n >= 3 else 0


def max_videos_per_split() -> int:
    """How many videos one split can hold with unique unordered event pairs."""
    n_events = math.prod(len(v) for v in ATTRIBUTES.values())
    n_partners = math.prod(len(v) - 1 for v in ATTRIBUTES.values())
    return n_events * n_partners // 2


# ----------------------------------------------------------------------------------------------
# Text


def caption(events: Sequence[Event], paraphrase: bool = False) -> str:
    """Caption of a two-event video, events in their order of appearance."""
    template = PARAPHRASE_TEMPLATE if paraphrase else CAPTION_TEMPLATE
    (c0, s0, d0), (c1, s1, d1) = events[0].key(), events[1].key()
    return template.format(c0=c0, s0=s0, d0=d0, c1=c1, s1=s1, d1=d1)


def tokenize_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, as BERT's basic tokenizer splits them."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


def vocabulary_words() -> list[str]:
    """Every token that any caption, option or question of the generator can contain, sorted."""
    fills = {k: " ".join(v) for k, v in ATTRIBUTES.items()}
    texts = [CAPTION_TEMPLATE, PARAPHRASE_TEMPLATE, *itertools.chain(*QUESTION_TEMPLATES.values()),
             *STILL_TEMPLATES, *STILL_PAIR_TEMPLATES]
    words = set()
    for text in texts:
        filled = text.format(c0=fills["color"], s0=fills["shape"], d0=fills["direction"],
                             c1="", s1="", d1="", c="", s="", d="", edge=" ".join(EDGES), **fills)
        words.update(tokenize_words(filled))
    return sorted(words)


def unordered_key(events: Sequence[Event]) -> tuple[tuple[str, str, str], ...]:
    """The pair of (colour, shape, direction) triples without their order."""
    return tuple(sorted(e.key() for e in events))


# ----------------------------------------------------------------------------------------------
# Scene generation (every random choice of the corpus comes from one generator, in video order)


def _draw_event_pair(rng: np.random.Generator) -> tuple[Event, Event]:
    """Two events that differ in colour, shape and direction, with random lanes."""
    first, second = {}, {}
    for attr, values in ATTRIBUTES.items():
        i, j = rng.choice(len(values), size=2, replace=False)
        first[attr], second[attr] = values[i], values[j]
    lanes = rng.uniform(0.0, 1.0, size=2)
    return Event(**first, lane=float(lanes[0])), Event(**second, lane=float(lanes[1]))


def _draw_format(cfg: SynthesisConfig, rng: np.random.Generator) -> str:
    if not cfg.mixed_formats:
        return "mp4"
    u = rng.uniform()
    if u < cfg.gif_fraction:
        return "gif"
    if u < cfg.gif_fraction + cfg.webm_fraction:
        return "webm"
    return "mp4"


def _draw_fps(ext: str, fps_choices: Sequence[int], rng: np.random.Generator) -> int:
    choices = list(fps_choices)
    if ext == "gif":
        choices = [f for f in choices if f in GIF_FPS] or [10]
    return int(choices[rng.integers(len(choices))])


def _draw_video(video_id: str, split: str, events: tuple[Event, Event], cfg: SynthesisConfig,
                rng: np.random.Generator) -> VideoSpec:
    ext = _draw_format(cfg, rng)
    width, height = cfg.sizes[rng.integers(len(cfg.sizes))]
    fps = _draw_fps(ext, cfg.fps_choices, rng)
    duration = rng.uniform(cfg.min_duration, cfg.max_duration)
    num_frames = max(2, round(duration * fps))
    short = min(width, height)
    shape_size = int(round(short * rng.uniform(cfg.min_shape_frac, cfg.max_shape_frac)))
    background = int(rng.integers(20, 71))
    return VideoSpec(video_id=video_id, split=split, ext=ext, width=int(width), height=int(height), fps=fps,
                     num_frames=num_frames, events=events, background=background, shape_size=max(4, shape_size))


def draw_specs(cfg: SynthesisConfig, rng: np.random.Generator) -> list[VideoSpec]:
    """Specs of every video, train first, then val, then test; event pairs unique within each split."""
    counts = cfg.split_counts()
    width = max(5, len(str(cfg.n_videos - 1)))
    specs: list[VideoSpec] = []
    for split in SPLITS:
        seen: set[tuple] = set()
        for _ in range(counts[split]):
            events = _draw_event_pair(rng)
            while unordered_key(events) in seen:
                events = _draw_event_pair(rng)
            seen.add(unordered_key(events))
            video_id = f"video{len(specs):0{width}d}"
            specs.append(_draw_video(video_id, split, events, cfg, rng))
    return specs


# ----------------------------------------------------------------------------------------------
# Rendering


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Anti-aliased coverage of a shape in a size x size box, float32 in [0, 1]."""
    n = size * SUPERSAMPLE
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1  # (n,) sample centres in [-1, 1]
    y, x = np.meshgrid(c, c, indexing="ij")  # (n, n) each
    if shape == "circle":
        inside = x * x + y * y <= 0.95**2
    elif shape == "square":
        inside = (np.abs(x) <= 0.82) & (np.abs(y) <= 0.82)
    elif shape == "triangle":  # apex up, base at the bottom
        inside = (y <= 0.9) & (np.abs(x) <= 0.95 * (y + 0.95) / 1.85)
    elif shape == "cross":
        inside = ((np.abs(x) <= 0.3) | (np.abs(y) <= 0.3)) & (np.abs(x) <= 0.95) & (np.abs(y) <= 0.95)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    coverage = inside.astype(np.float32).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE)  # (s, ss, s, ss)
    return coverage.mean(axis=(1, 3))  # (s, s)


@dataclass(frozen=True)
class _Track:
    """Pixel path of one event's shape: centre positions at the event's first and last frame."""

    start: tuple[float, float]  # (x, y) centre
    end: tuple[float, float]  # (x, y) centre
    step: tuple[float, float]  # (dx, dy) offset from one trail copy to the next, pointing backwards


def _track(spec: VideoSpec, event: Event) -> _Track:
    s = spec.shape_size
    pad = 0.05 * min(spec.width, spec.height)
    trail = len(TRAIL_ALPHAS) * TRAIL_STEP * s
    dx, dy = DIRECTIONS[event.direction]
    along, across = (spec.width, spec.height) if dx else (spec.height, spec.width)
    lo, hi = pad + s / 2 + trail, along - pad - s / 2  # the trail stays inside the frame
    if hi < lo:
        lo = hi = along / 2
    a0, a1 = (lo, hi) if (dx + dy) > 0 else (along - lo, along - hi)
    c_lo, c_hi = pad + s / 2, across - pad - s / 2
    c = c_lo + event.lane * max(0.0, c_hi - c_lo)
    if dx:
        return _Track(start=(a0, c), end=(a1, c), step=(-dx * TRAIL_STEP * s, 0.0))
    return _Track(start=(c, a0), end=(c, a1), step=(0.0, -dy * TRAIL_STEP * s))


def shape_alpha(height: int, width: int, mask: np.ndarray, centre: tuple[float, float],
               step: tuple[float, float]) -> tuple[int, int, np.ndarray]:
    """Alpha of the shape and its trail over their bounding box, clipped to the frame.

    Returns (y0, x0, alpha (h, w) float32): the box's top-left corner and its combined opacity.
    """
    s = mask.shape[0]
    copies = [(1.0, centre)] + [
        (a, (centre[0] + (k + 1) * step[0], centre[1] + (k + 1) * step[1])) for k, a in enumerate(TRAIL_ALPHAS)
    ]
    corners = [(int(round(cy - s / 2)), int(round(cx - s / 2))) for _, (cx, cy) in copies]
    y0 = max(0, min(c[0] for c in corners))
    x0 = max(0, min(c[1] for c in corners))
    y1 = min(height, max(c[0] for c in corners) + s)
    x1 = min(width, max(c[1] for c in corners) + s)
    transmit = np.ones((max(0, y1 - y0), max(0, x1 - x0)), np.float32)  # (h, w) light passing through
    for (alpha, _), (cy, cx) in zip(copies, corners):
        ty0, tx0, ty1, tx1 = max(cy, y0), max(cx, x0), min(cy + s, y1), min(cx + s, x1)
        if ty1 <= ty0 or tx1 <= tx0:
            continue
        m = mask[ty0 - cy: ty1 - cy, tx0 - cx: tx1 - cx]  # (th, tw) visible part of the copy
        transmit[ty0 - y0: ty1 - y0, tx0 - x0: tx1 - x0] *= 1.0 - alpha * m
    return y0, x0, 1.0 - transmit


def iter_layers(spec: VideoSpec) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Per frame: (event index, y0, x0, alpha (h, w)) of the visible shape over the background."""
    masks = [shape_mask(e.shape, spec.shape_size) for e in spec.events]
    for ev, (start, end) in enumerate(spec.event_frames()):
        track = _track(spec, spec.events[ev])
        span = max(1, end - start - 1)
        for t in range(start, end):
            p = (t - start) / span
            centre = (track.start[0] + p * (track.end[0] - track.start[0]),
                      track.start[1] + p * (track.end[1] - track.start[1]))
            y0, x0, alpha = shape_alpha(spec.height, spec.width, masks[ev], centre, track.step)
            yield ev, y0, x0, alpha


def iter_rgb_frames(spec: VideoSpec) -> Iterator[np.ndarray]:
    """The video's frames as uint8 (H, W, 3) RGB arrays, one at a time."""
    bg = np.full((spec.height, spec.width, 3), spec.background, np.uint8)  # (H, W, 3)
    colors = [np.asarray(COLORS[e.color], np.float32) for e in spec.events]
    for ev, y0, x0, alpha in iter_layers(spec):
        frame = bg.copy()
        h, w = alpha.shape
        blend = spec.background + alpha[..., None] * (colors[ev] - spec.background)  # (h, w, 3)
        frame[y0:y0 + h, x0:x0 + w] = np.rint(blend).astype(np.uint8)
        yield frame


def render_frames(spec: VideoSpec) -> np.ndarray:
    """All frames of a video, uint8 (T, H, W, 3) RGB (memory: T*H*W*3 bytes)."""
    return np.stack(list(iter_rgb_frames(spec)))  # (T, H, W, 3)


def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YCbCr of RGB values, float32 (..., 3) in (..., 3) out."""
    m = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]],
                 np.float32) / 255.0
    return np.asarray(rgb, np.float32) @ m.T + np.array([16.0, 128.0, 128.0], np.float32)


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (H*3/2, W) planar YUV 4:2:0 (Y, then U, then V, as PyAV lays it out)."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"YUV 4:2:0 needs even frame sizes, got {w}x{h}")
    yuv = rgb_to_yuv(frame)  # (H, W, 3)
    chroma = yuv[..., 1:].reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3))  # (H/2, W/2, 2)
    planes = [yuv[..., 0].ravel(), chroma[..., 0].ravel(), chroma[..., 1].ravel()]
    return np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def iter_yuv_frames(spec: VideoSpec) -> Iterator[np.ndarray]:
    """The video's frames as uint8 (H*3/2, W) planar YUV 4:2:0, one at a time.

    Blended directly in YUV (linear in RGB, so equal to rgb_to_yuv420p of iter_rgb_frames up to rounding);
    only the shape's patch is computed per frame.
    """
    H, W = spec.height, spec.width
    bg = rgb_to_yuv(np.full(3, spec.background, np.float32))  # (3,)
    colors = [rgb_to_yuv(np.asarray(COLORS[e.color], np.float32)) for e in spec.events]  # (3,) each
    base = np.concatenate([np.full(H * W, bg[0]), np.full(H * W // 4, bg[1]), np.full(H * W // 4, bg[2])])
    base = np.rint(base).astype(np.uint8)  # (H*W*3/2,) flat Y, U, V planes
    for ev, y0, x0, alpha in iter_layers(spec):
        ey, ex = y0 - y0 % 2, x0 - x0 % 2  # align the patch to the chroma grid
        h2 = (y0 - ey + alpha.shape[0] + 1) // 2 * 2
        w2 = (x0 - ex + alpha.shape[1] + 1) // 2 * 2
        a = np.zeros((h2, w2), np.float32)  # (h2, w2) even-sized patch, inside the (even-sized) frame
        a[y0 - ey: y0 - ey + alpha.shape[0], x0 - ex: x0 - ex + alpha.shape[1]] = alpha
        ac = a.reshape(h2 // 2, 2, w2 // 2, 2).mean(axis=(1, 3))  # (h2/2, w2/2) chroma opacity
        frame = base.copy()
        y_plane = frame[: H * W].reshape(H, W)
        u_plane = frame[H * W: H * W * 5 // 4].reshape(H // 2, W // 2)
        v_plane = frame[H * W * 5 // 4:].reshape(H // 2, W // 2)
        y_plane[ey: ey + h2, ex: ex + w2] = _blend(bg[0], colors[ev][0], a)
        u_plane[ey // 2: ey // 2 + h2 // 2, ex // 2: ex // 2 + w2 // 2] = _blend(bg[1], colors[ev][1], ac)
        v_plane[ey // 2: ey // 2 + h2 // 2, ex // 2: ex // 2 + w2 // 2] = _blend(bg[2], colors[ev][2], ac)
        yield frame.reshape(H * 3 // 2, W)


def _blend(back: float, fore: float, alpha: np.ndarray) -> np.ndarray:
    """uint8 of back + alpha * (fore - back), alpha (h, w) in [0, 1]."""
    return np.clip(np.rint(back + alpha * (fore - back)), 0, 255).astype(np.uint8)


def gif_palette(spec: VideoSpec) -> np.ndarray:
    """ARGB (256, 4) palette: the background, then GIF_LEVELS blends towards each event colour."""
    pal = np.zeros((256, 4), np.uint8)
    pal[:, 0] = 255
    pal[:, 1:] = spec.background
    levels = np.linspace(0.0, 1.0, GIF_LEVELS, dtype=np.float32)[:, None]  # (L, 1)
    for ev, event in enumerate(spec.events):
        color = np.asarray(COLORS[event.color], np.float32)
        rows = spec.background + levels * (color - spec.background)  # (L, 3)
        pal[1 + ev * GIF_LEVELS: 1 + (ev + 1) * GIF_LEVELS, 1:] = np.rint(rows).astype(np.uint8)
    return pal


def iter_gif_frames(spec: VideoSpec) -> Iterator[np.ndarray]:
    """Palette indices (H, W) uint8 for gif_palette(spec), one frame at a time."""
    for ev, y0, x0, alpha in iter_layers(spec):
        idx = np.zeros((spec.height, spec.width), np.uint8)
        h, w = alpha.shape
        level = np.rint(alpha * (GIF_LEVELS - 1)).astype(np.int32)  # (h, w)
        idx[y0:y0 + h, x0:x0 + w] = np.where(level > 0, 1 + ev * GIF_LEVELS + level, 0)
        yield idx


RGB332_PALETTE = np.concatenate([
    np.full((256, 1), 255, np.uint8),
    np.stack(np.meshgrid(np.rint(np.arange(8) * 255 / 7), np.rint(np.arange(8) * 255 / 7),
                         np.rint(np.arange(4) * 255 / 3), indexing="ij"), -1).reshape(256, 3).astype(np.uint8),
], axis=1)  # (256, 4) ARGB: 8 red x 8 green x 4 blue levels


def rgb_to_rgb332(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> (H, W) indices into RGB332_PALETTE (nearest level per channel)."""
    f = frame.astype(np.float32)
    r, g, b = (np.rint(f[..., i] * n / 255).astype(np.uint8) for i, n in enumerate((7, 7, 3)))
    return (r * 32 + g * 4 + b).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Encoding


def _resolve_codec(path: Path, codec: str | None) -> str:
    if codec is None:
        ext = path.suffix.lstrip(".").lower()
        if ext not in EXTENSION_CODECS:
            raise ValueError(f"cannot pick a codec for extension {ext!r}; pass codec=")
        return EXTENSION_CODECS[ext]
    return CODEC_ALIASES.get(codec, codec)


def write_video(path: str | Path, frames: np.ndarray | Iterable[np.ndarray], fps: int, codec: str | None = None,
                *, input_format: str = "rgb24", palette: np.ndarray | None = None, faststart: bool = False,
                options: dict[str, str] | None = None) -> Path:
    """Encode frames into a video file with PyAV, deterministically (one thread, bit-exact muxing).

    Colour conversion happens in numpy (BT.601 limited range for YUV, a fixed 3-3-2 palette for GIF from RGB),
    never in swscale, so the same frames always give the same bytes.

    Args:
        path: output file; the container follows the extension (.mp4, .webm, .gif, .mkv, .avi, ...).
        frames: uint8 (T, H, W, 3) RGB frames or an iterable of (H, W, 3) frames; with input_format="yuv420p",
            (H*3/2, W) planar YUV 4:2:0 frames; with input_format="pal8", (H, W) palette indices.
            YUV codecs (H.264, VP9, AV1, MPEG-4) need even H and W.
        fps: frames per second (an integer; GIF stores whole-centisecond delays, so use a divisor of 100).
        codec: "libx264"/"h264", "libvpx-vp9"/"vp9", "libsvtav1"/"av1", "gif", "mpeg4" or any PyAV
            encoder that takes yuv420p; None picks one from the extension.
        input_format: "rgb24", "yuv420p" or "pal8" (GIF only, with `palette`).
        palette: ARGB (256, 4) uint8 palette for pal8 frames.
        faststart: for mp4/mov, put the moov atom before the media data.
        options: extra encoder options, merged over the defaults of ENCODER_OPTIONS.

    Returns:
        The path written.
    """
    path = Path(path)
    codec = _resolve_codec(path, codec)
    if input_format == "pal8" and (palette is None or codec != "gif"):
        raise ValueError("input_format='pal8' needs codec='gif' and a palette")
    opts = {**ENCODER_OPTIONS.get(codec, {}), **(options or {})}
    fmt_opts = {"fflags": "+bitexact"}
    if faststart:
        fmt_opts["movflags"] = "+faststart"
    av_frames = (_to_av_frame(f, codec, input_format, palette) for f in frames)
    first = next(av_frames, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=fmt_opts) as container:
        stream = container.add_stream(codec, rate=fps, options=opts)
        stream.width, stream.height, stream.pix_fmt = first.width, first.height, first.format.name
        stream.codec_context.thread_count = 1
        for frame in itertools.chain([first], av_frames):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _to_av_frame(frame: np.ndarray, codec: str, input_format: str, palette: np.ndarray | None) -> av.VideoFrame:
    frame = np.ascontiguousarray(frame)
    if codec == "gif":
        if input_format == "rgb24":
            frame, palette = rgb_to_rgb332(frame), RGB332_PALETTE
        elif input_format != "pal8":
            raise ValueError(f"GIF frames must be rgb24 or pal8, got {input_format!r}")
        return av.VideoFrame.from_ndarray((frame, palette), format="pal8")
    if input_format == "rgb24":
        frame = rgb_to_yuv420p(frame)
    elif input_format != "yuv420p":
        raise ValueError(f"{codec} frames must be rgb24 or yuv420p, got {input_format!r}")
    return av.VideoFrame.from_ndarray(frame, format="yuv420p")


def encode_spec(spec: VideoSpec, videos_dir: str | Path) -> Path:
    """Render and encode one video into videos_dir; returns its path."""
    path = Path(videos_dir) / spec.filename
    if spec.ext == "gif":
        return write_video(path, iter_gif_frames(spec), spec.fps, "gif", input_format="pal8",
                           palette=gif_palette(spec))
    return write_video(path, iter_yuv_frames(spec), spec.fps, spec.codec, input_format="yuv420p")


def _encode_job(args: tuple[VideoSpec, str]) -> str:
    spec, videos_dir = args
    return str(encode_spec(spec, videos_dir))


def encode_all(specs: Sequence[VideoSpec], videos_dir: Path, workers: int = 1) -> None:
    """Encode every spec, in worker processes when workers > 1 (the bytes do not depend on it)."""
    jobs = [(s, str(videos_dir)) for s in specs]
    step = max(1, len(jobs) // 10)
    if workers <= 1:
        _drain(map(_encode_job, jobs), len(jobs), step)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        _drain(pool.map(_encode_job, jobs, chunksize=4), len(jobs), step)


def _drain(results: Iterable[str], total: int, step: int) -> None:
    for i, _ in enumerate(results, 1):
        if i % step == 0 or i == total:
            logger.info("encoded %d/%d videos", i, total)


# ----------------------------------------------------------------------------------------------
# Annotations


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


def _write_corpus_json(root: Path, cfg: SynthesisConfig, specs: Sequence[VideoSpec]) -> None:
    doc = {
        "format_version": FORMAT_VERSION,
        "options": dataclasses.asdict(cfg),
        "split_counts": cfg.split_counts(),
        "videos": [s.to_json() for s in specs],
    }
    (root / "corpus.json").write_text(json.dumps(doc, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------
# Entry point


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
