"""Scenes of the synthetic video corpus: events, per-video specs, the generator options, and drawing the specs.

Each video shows two events in sequence ("a red circle moves left, then a blue square moves up"):
event 1 fills the first half of the frames, event 2 the second half, and each shape is visible only
during its own event. The two events of a video differ in colour, shape and direction, so every QA
question names one event unambiguously; within a split no two videos share the same unordered pair of
events, so a caption identifies its video even without using the event order.

Every random choice of the corpus comes from one np.random.Generator, in video order (draw_specs, then the
annotations of clipbert.synthetic.annotations).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clipbert.synthetic.vocabulary import ATTRIBUTES, caption

SPLITS = ("train", "val", "test")

DEFAULT_SIZES: tuple[tuple[int, int], ...] = (  # (width, height) in pixels
    (160, 120), (240, 180), (320, 240), (480, 360),  # 4:3
    (320, 180), (480, 270),  # 16:9
    (180, 320), (270, 480), (360, 480),  # portrait
    (240, 240), (360, 360),  # square
)
DEFAULT_FPS: tuple[int, ...] = (10, 15, 24, 25, 30)
GIF_FPS: tuple[int, ...] = (10, 20, 25, 50)  # GIF frame delays are whole centiseconds

EXTENSION_CODECS = {  # container extension -> default encoder
    "mp4": "libx264", "mkv": "libx264", "mov": "libx264", "webm": "libvpx-vp9", "gif": "gif", "avi": "mpeg4",
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


def _fraction_count(n: int, fraction: float) -> int:
    if fraction <= 0:
        return 0
    return max(1, round(n * fraction)) if n >= 3 else 0


def max_videos_per_split() -> int:
    """How many videos one split can hold with unique unordered event pairs."""
    n_events = math.prod(len(v) for v in ATTRIBUTES.values())
    n_partners = math.prod(len(v) - 1 for v in ATTRIBUTES.values())
    return n_events * n_partners // 2


def unordered_key(events: Sequence[Event]) -> tuple[tuple[str, str, str], ...]:
    """The pair of (colour, shape, direction) triples without their order."""
    return tuple(sorted(e.key() for e in events))


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
