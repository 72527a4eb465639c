"""Tests of clipbert/synthetic/stills.py: captioned stills of the video world for image-text pretraining."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from clipbert.synthetic.stills import StillShape, StillSpec, nearest_edge, render_still, synthesize_images
from clipbert.synthetic.vocabulary import COLORS
from clipbert.data.text import load_tokenizer


def _digest(root) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


def test_same_seed_same_bytes_and_the_caption_files(tmp_path):
    a = synthesize_images(tmp_path / "a", n_images=12, val_images=3, seed=4)
    synthesize_images(tmp_path / "b", n_images=12, val_images=3, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    lines = [json.loads(x) for x in (tmp_path / "a" / "txt" / "pretrain_val.jsonl").read_text().splitlines()]
    assert {x["coco_id"] for x in lines} == {s.image_id for s in a if s.split == "val"} and len(lines) == 15
    assert {p.suffix for p in (tmp_path / "a" / "images").iterdir()} <= {".jpg", ".png"}


def test_captions_describe_only_what_the_still_shows_and_tokenize_without_unknowns(tmp_path):
    specs = synthesize_images(tmp_path, n_images=60, val_images=10, seed=1)
    tok = load_tokenizer(tmp_path / "tokenizer")
    for spec in specs:
        present = {w for s in spec.shapes for w in (s.color, s.shape, s.direction)}
        for caption in spec.captions:
            named = {w for w in caption.split() if w in COLORS or w in ("circle", "square", "triangle", "cross")}
            assert named <= present, (spec.image_id, caption)
            assert tok.unk_token_id not in tok(caption)["input_ids"]
        assert len(set(spec.captions)) == len(spec.captions) == 5


def test_render_draws_the_shape_in_its_colour_with_a_trail_behind_it():
    shape = StillShape(color="red", shape="square", direction="right", x=100.0, y=60.0)
    spec = StillSpec("x", "train", "png", 200, 120, 30, 30, (shape,), ("a red square moves right",))
    rgb = render_still(spec)
    assert rgb.shape == (120, 200, 3) and tuple(rgb[60, 100]) == COLORS["red"]
    assert tuple(rgb[5, 5]) == (30, 30, 30)
    behind, ahead = rgb[60, 100 - 25].astype(int), rgb[60, 100 + 25].astype(int)
    assert behind[0] > 60 and tuple(ahead) == (30, 30, 30)  # the fading trail lies opposite the motion
    assert nearest_edge(100, 10, 200, 120) == "top" and nearest_edge(195, 60, 200, 120) == "right"
    assert np.array_equal(render_still(spec), rgb)
