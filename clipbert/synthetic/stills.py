"""Synthetic image-caption corpus for image-text pretraining: stills of the video world, described by captions only.

A still shows one or two shapes of the synthetic video world (clipbert.synthetic.render: the same colours, shapes and
fading trails that show which way a shape moves) on a plain grey background. Each image gets several captions of
what is visible, drawn from ``vocabulary.STILL_TEMPLATES`` / ``STILL_PAIR_TEMPLATES`` (a caption may mention only
some of what is there, as COCO captions do). The captions are the only supervision pretraining sees; the per-image
metadata in ``images.json`` is for people and tests.

Layout written by ``synthesize_images(out_dir, ...)``:

    out_dir/images/<image_id>.<jpg|png>
    out_dir/txt/pretrain_{train,val}.jsonl   {"coco_id": image_id, "caption": ...}, one line per caption
    out_dir/txt/vocab_words.txt              the video corpus's word list (one tokenizer serves both)
    out_dir/tokenizer/vocab.txt
    out_dir/images.json                      generator options and per-image metadata

The same options and seed give the same bytes. Use a seed that no video corpus of the same experiment uses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipbert.synthetic.corpus import prepare_output
from clipbert.synthetic.render import TRAIL_STEP, shape_alpha, shape_mask
from clipbert.synthetic.vocabulary import (
    ATTRIBUTES,
    COLORS,
    DIRECTIONS,
    EDGES,
    STILL_PAIR_TEMPLATES,
    STILL_TEMPLATES,
    vocabulary_words,
)
from clipbert.synthetic.world import DEFAULT_SIZES
from clipbert.data.text import write_vocab

logger = logging.getLogger(__name__)

IMAGE_SPLITS = ("train", "val")


@dataclass(frozen=True)
class StillShape:
    """One shape in a still: its looks, the way its trail says it moves, and its centre in pixels."""

    color: str
    shape: str
    direction: str
    x: float
    y: float


@dataclass(frozen=True)
class StillSpec:
    image_id: str
    split: str
    ext: str  # jpg | png
    width: int
    height: int
    background: int  # grey level
    shape_size: int  # pixels
    shapes: tuple[StillShape, ...]
    captions: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"{self.image_id}.{self.ext}"


@dataclass(frozen=True)
class ImageCorpusConfig:
    n_images: int  # train + val
    val_images: int = 100
    seed: int = 0
    captions_per_image: int = 5  # COCO has 5
    pair_fraction: float = 0.6  # share of stills with two shapes
    png_fraction: float = 0.2  # share stored as PNG (the rest JPEG)
    min_shape_frac: float = 0.2  # shape size as a fraction of the short side
    max_shape_frac: float = 0.3

    def validate(self) -> None:
        if not 0 < self.val_images < self.n_images:
            raise ValueError(f"need 0 < val_images < n_images, got {self.val_images} of {self.n_images}")
        if self.captions_per_image < 1:
            raise ValueError(f"captions_per_image must be >= 1, got {self.captions_per_image}")


# ------------------------------------------------------------------------------------------------- scenes
def _draw_looks(rng: np.random.Generator, count: int) -> list[dict[str, str]]:
    """``count`` shapes that differ from each other in colour, shape and direction."""
    picks = {attr: rng.choice(len(values), size=count, replace=False) for attr, values in ATTRIBUTES.items()}
    return [{attr: ATTRIBUTES[attr][int(picks[attr][i])] for attr in ATTRIBUTES} for i in range(count)]


def _place(rng: np.random.Generator, width: int, height: int, size: int, count: int) -> list[tuple[float, float]]:
    """Centres of ``count`` shapes: one per part of the frame split along its longer side, so they never overlap."""
    along_x = width >= height
    span = (width if along_x else height) / count
    centres = []
    for i in range(count):
        lo, hi = i * span + size / 2, (i + 1) * span - size / 2
        a = rng.uniform(lo, hi) if hi > lo else (lo + hi) / 2
        b = rng.uniform(size / 2, (height if along_x else width) - size / 2)
        centres.append((a, b) if along_x else (b, a))
    return centres


def nearest_edge(x: float, y: float, width: int, height: int) -> str:
    """The image edge (one of EDGES) closest to a point, relative to the image's size."""
    distances = {"top": y / height, "bottom": 1 - y / height, "left": x / width, "right": 1 - x / width}
    return min(EDGES, key=lambda e: distances[e])


def _captions(shapes: tuple[StillShape, ...], width: int, height: int, count: int,
              rng: np.random.Generator) -> tuple[str, ...]:
    """``count`` distinct captions (fewer when the templates allow fewer) of what the still shows."""
    def fill(template: str, s: StillShape) -> str:
        return template.format(c=s.color, s=s.shape, d=s.direction, edge=nearest_edge(s.x, s.y, width, height))

    options = [fill(t, s) for t in STILL_TEMPLATES for s in shapes]
    if len(shapes) == 2:
        for a, b in (shapes, shapes[::-1]):
            options += [t.format(c0=a.color, s0=a.shape, d0=a.direction, c1=b.color, s1=b.shape, d1=b.direction)
                        for t in STILL_PAIR_TEMPLATES]
    options = list(dict.fromkeys(options))
    chosen = rng.choice(len(options), size=min(count, len(options)), replace=False)
    return tuple(options[int(i)] for i in chosen)


def draw_stills(cfg: ImageCorpusConfig, rng: np.random.Generator) -> list[StillSpec]:
    """Specs of every still, train first, then val."""
    width_digits = max(5, len(str(cfg.n_images - 1)))
    specs = []
    for i in range(cfg.n_images):
        split = "train" if i < cfg.n_images - cfg.val_images else "val"
        width, height = (int(v) for v in DEFAULT_SIZES[rng.integers(len(DEFAULT_SIZES))])
        count = 2 if rng.uniform() < cfg.pair_fraction else 1
        size = max(4, int(round(min(width, height) * rng.uniform(cfg.min_shape_frac, cfg.max_shape_frac))))
        looks = _draw_looks(rng, count)
        centres = _place(rng, width, height, size, count)
        shapes = tuple(StillShape(**look, x=float(x), y=float(y)) for look, (x, y) in zip(looks, centres))
        specs.append(StillSpec(
            image_id=f"image{i:0{width_digits}d}", split=split, ext="png" if rng.uniform() < cfg.png_fraction else "jpg",
            width=width, height=height, background=int(rng.integers(20, 71)), shape_size=size, shapes=shapes,
            captions=_captions(shapes, width, height, cfg.captions_per_image, rng)))
    return specs


def render_still(spec: StillSpec) -> np.ndarray:
    """The still as uint8 (H, W, 3) RGB: each shape with its trail pointing away from where it moves."""
    frame = np.full((spec.height, spec.width, 3), float(spec.background), np.float32)  # (H, W, 3)
    for s in spec.shapes:
        dx, dy = DIRECTIONS[s.direction]
        step = (-dx * TRAIL_STEP * spec.shape_size, -dy * TRAIL_STEP * spec.shape_size)
        y0, x0, alpha = shape_alpha(spec.height, spec.width, shape_mask(s.shape, spec.shape_size), (s.x, s.y), step)
        h, w = alpha.shape
        patch = frame[y0:y0 + h, x0:x0 + w]  # (h, w, 3) view
        patch += alpha[..., None] * (np.asarray(COLORS[s.color], np.float32) - patch)
    return np.rint(frame).astype(np.uint8)


def encode_still(spec: StillSpec, images_dir: Path) -> Path:
    """Write the rendered still as JPEG (quality 90) or PNG."""
    path = images_dir / spec.filename
    rgb = render_still(spec)
    if spec.ext == "png":
        from PIL import Image

        Image.fromarray(rgb).save(path, format="PNG")
    else:
        import simplejpeg

        path.write_bytes(simplejpeg.encode_jpeg(rgb, quality=90, colorspace="RGB"))
    return path


# ------------------------------------------------------------------------------------------------- corpus
def synthesize_images(out_dir: str | Path, *, n_images: int, val_images: int = 100, seed: int = 0,
                      overwrite: bool = False, **options) -> list[StillSpec]:
    """Render, encode and caption a synthetic image corpus (layout in the module docstring); returns the specs.

    ``options``: any other ImageCorpusConfig field (captions_per_image, pair_fraction, png_fraction, ...).
    Raises FileExistsError when out_dir already holds one and not ``overwrite``.
    """
    start = time.perf_counter()
    cfg = ImageCorpusConfig(n_images=n_images, val_images=val_images, seed=seed, **options)
    cfg.validate()
    root = Path(out_dir)
    prepare_output(root, "images", "images.json", overwrite, "an image corpus")
    (root / "txt").mkdir()
    specs = draw_stills(cfg, np.random.default_rng(seed))
    for spec in specs:
        encode_still(spec, root / "images")
    for split in IMAGE_SPLITS:
        with open(root / "txt" / f"pretrain_{split}.jsonl", "w", encoding="utf-8") as f:
            for spec in (s for s in specs if s.split == split):
                for text in spec.captions:
                    f.write(json.dumps({"coco_id": spec.image_id, "caption": text}) + "\n")
    words = vocabulary_words()
    (root / "txt" / "vocab_words.txt").write_text("\n".join(words) + "\n")
    write_vocab(words, root / "tokenizer")
    doc = {"options": dataclasses.asdict(cfg), "images": [dataclasses.asdict(s) for s in specs]}
    (root / "images.json").write_text(json.dumps(doc, indent=1) + "\n")
    logger.info("synthesized %d stills (%d val, %d captions) in %s in %.1f s", len(specs), cfg.val_images,
                sum(len(s.captions) for s in specs), root, time.perf_counter() - start)
    return specs
