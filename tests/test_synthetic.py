"""Tests of the synthetic corpus: determinism, annotation formats, event uniqueness, pixels and encoded videos."""

from __future__ import annotations

import json
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from clipbert import synthetic as S

TINY = dict(min_duration=2.0, max_duration=3.0, sizes=[(64, 48), (64, 96), (80, 80)], fps_choices=[10, 25])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> S.CorpusInfo:
    root = tmp_path_factory.mktemp("corpus")
    return S.synthesize_corpus(root, n_videos=10, seed=5, mixed_formats=True, val_videos=2, test_videos=3, **TINY)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def decode_pyav(path: Path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as c:
        rate = float(c.streams.video[0].average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # (T, H, W, 3)
    return frames, rate


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, corpus):
    again = S.synthesize_corpus(tmp_path / "b", n_videos=10, seed=5, mixed_formats=True, val_videos=2,
                                test_videos=3, workers=2, **TINY)
    first, second = all_files(corpus.root), all_files(again.root)
    assert sorted(first) == sorted(second)
    assert len([k for k in first if k.startswith("videos/")]) == 10
    assert [k for k in first if first[k] != second[k]] == []


@pytest.mark.parametrize("ext", ["mp4", "webm", "gif"])
def test_encoding_does_not_depend_on_heap_contents(tmp_path, ext):
    spec = _spec("right", ext=ext, width=64, height=64, num_frames=30, shape_size=20)
    rng = np.random.default_rng(0)
    outputs = set()
    for k in range(4):
        junk = [rng.random((int(rng.integers(100, 400)), 300)) for _ in range(5)]  # leave garbage on the heap
        outputs.add(S.encode_spec(spec, tmp_path / str(k)).read_bytes())
        del junk
    assert len(outputs) == 1


def test_other_seed_other_corpus(tmp_path, corpus):
    other = S.synthesize_corpus(tmp_path / "c", n_videos=10, seed=6, mixed_formats=True, val_videos=2,
                                test_videos=3, **TINY)
    assert all_files(other.root)["txt/retrieval_train.jsonl"] != all_files(corpus.root)["txt/retrieval_train.jsonl"]


def test_existing_corpus_needs_overwrite(tmp_path):
    S.synthesize_corpus(tmp_path, n_videos=3, seed=0, **TINY)
    with pytest.raises(FileExistsError, match="overwrite"):
        S.synthesize_corpus(tmp_path, n_videos=3, seed=0, **TINY)
    info = S.synthesize_corpus(tmp_path, n_videos=2, seed=0, overwrite=True, val_fraction=0, test_fraction=0, **TINY)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [v.filename for v in info.videos]


# ---------------------------------------------------------------------------------------------- annotations


def test_splits_are_disjoint_and_complete(corpus):
    assert {s: len(ids) for s, ids in corpus.splits.items()} == {"train": 5, "val": 2, "test": 3}
    ids = [i for s in S.SPLITS for i in corpus.splits[s]]
    assert len(set(ids)) == 10 and sorted(ids) == sorted(v.video_id for v in corpus.videos)
    for split in S.SPLITS:
        for task, key in (("retrieval", "clip_name"), ("mc", "clip_name"), ("qa", "video_id")):
            rows = read_jsonl(corpus.annotation_path(task, split))
            assert {r[key] for r in rows} == set(corpus.splits[split]), (task, split)


def test_annotation_fields_and_types(corpus):
    for split in S.SPLITS:
        for r in read_jsonl(corpus.annotation_path("retrieval", split)):
            assert set(r) == {"clip_name", "caption", "sen_id"} and isinstance(r["caption"], str)
        for r in read_jsonl(corpus.annotation_path("mc", split)):
            assert set(r) == {"qid", "clip_name", "options", "answer"}
            assert isinstance(r["answer"], int) and len(r["options"]) == 5
        for r in read_jsonl(corpus.annotation_path("qa", split)):
            assert set(r) == {"video_id", "question", "answer", "answer_type"}
            assert r["answer_type"] in ("color", "shape", "direction")
    qa_train = read_jsonl(corpus.annotation_path("qa", "train"))
    assert len(qa_train) == 5 * 3
    ans2label = json.loads(corpus.ans2label_path.read_text())
    assert set(ans2label) == {r["answer"] for r in qa_train}
    assert sorted(ans2label.values()) == list(range(len(ans2label)))


def test_corpus_json_matches_specs(corpus):
    doc = json.loads((corpus.root / "corpus.json").read_text())
    assert doc["options"]["seed"] == 5 and doc["split_counts"] == {"train": 5, "val": 2, "test": 3}
    for meta, spec in zip(doc["videos"], corpus.videos):
        assert meta["video_id"] == spec.video_id and meta["caption"] == S.caption(spec.events)
        assert meta["duration_s"] == pytest.approx(meta["num_frames"] / meta["fps"])
        assert [e["color"] for e in meta["events"]] == [e.color for e in spec.events]


def test_load_corpus_reads_back_the_specs(corpus):
    loaded = S.load_corpus(corpus.root)
    assert loaded.videos == corpus.videos and loaded.config == corpus.config and loaded.splits == corpus.splits
    assert loaded.video_path("video00003").exists()


def test_retrieval_caption_names_both_events_in_order(corpus):
    by_id = {v.video_id: v for v in corpus.videos}
    for r in read_jsonl(corpus.annotation_path("retrieval", "train")):
        e0, e1 = by_id[r["clip_name"]].events
        assert r["caption"] == f"a {e0.color} {e0.shape} moves {e0.direction}, then a {e1.color} {e1.shape} moves {e1.direction}"


def test_paraphrases_add_a_second_train_caption(tmp_path):
    info = S.synthesize_corpus(tmp_path, n_videos=4, seed=1, paraphrases=True, val_videos=1, test_videos=1, **TINY)
    rows = read_jsonl(info.annotation_path("retrieval", "train"))
    assert len(rows) == 4 and len({r["caption"] for r in rows}) == 4
    assert [r["sen_id"] for r in rows] == [0, 1, 2, 3]
    assert len(read_jsonl(info.annotation_path("retrieval", "val"))) == 1


def _event_pairs(n: int, seed: int) -> list[S.VideoSpec]:
    cfg = S.SynthesisConfig(n_videos=n, seed=seed, val_videos=n // 5, test_videos=n // 5)
    return S.draw_specs(cfg, np.random.default_rng(seed))


def test_unordered_event_pairs_unique_per_split_and_events_differ_everywhere():
    specs = _event_pairs(1500, seed=0)  # 900 train videos: collisions certainly get re-drawn
    for split in S.SPLITS:
        keys = [S.unordered_key(v.events) for v in specs if v.split == split]
        assert len(keys) == len(set(keys))
    for v in specs:
        a, b = v.events
        assert a.color != b.color and a.shape != b.shape and a.direction != b.direction


def test_too_many_videos_for_one_split_is_an_error():
    with pytest.raises(ValueError, match="distinct unordered event pairs"):
        S.SynthesisConfig(n_videos=S.max_videos_per_split() + 10, val_videos=0, test_videos=0).validate()
    with pytest.raises(ValueError, match="no train videos"):
        S.SynthesisConfig(n_videos=5, val_videos=3, test_videos=2).validate()


def test_explicit_split_counts_for_a_learning_corpus():
    assert S.SynthesisConfig(n_videos=500, val_videos=50, test_videos=100).split_counts() == {
        "train": 350, "val": 50, "test": 100}
    assert S.SynthesisConfig(n_videos=500).split_counts() == {"train": 400, "val": 50, "test": 50}


def _parse_caption(text: str) -> tuple[tuple[str, str, str], ...]:
    first, second = text.split(", then ")
    return tuple(tuple(part.split()[1:2] + part.split()[2:3] + part.split()[4:5]) for part in (first, second))


def test_mc_answer_is_the_truth_and_distractors_differ_beyond_order(corpus):
    by_id = {v.video_id: v for v in corpus.videos}
    rows = [r for s in S.SPLITS for r in read_jsonl(corpus.annotation_path("mc", s))]
    for r in rows:
        truth = by_id[r["clip_name"]].events
        assert r["options"][r["answer"]] == S.caption(truth)
        keys = [tuple(sorted(_parse_caption(o))) for o in r["options"]]
        assert len(set(keys)) == 5  # no option equals another, even with the events swapped
        for o in r["options"]:
            (c0, s0, d0), (c1, s1, d1) = _parse_caption(o)
            assert c0 != c1 and s0 != s1 and d0 != d1  # distractors look like real captions


def test_mc_distractor_changes_stay_in_range():
    cfg = S.SynthesisConfig(n_videos=50, mc_changes=(1, 1))
    rng = np.random.default_rng(0)
    for spec in S.draw_specs(cfg, rng)[:30]:
        row = S.mc_example(spec, 0, cfg, rng)
        truth = [e.key() for e in spec.events]
        for i, o in enumerate(row["options"]):
            diff = sum(a != b for ev, tev in zip(_parse_caption(o), truth) for a, b in zip(ev, tev))
            assert diff == (0 if i == row["answer"] else 1)


def test_qa_questions_are_unambiguous_and_answers_right(corpus):
    by_id = {v.video_id: v for v in corpus.videos}
    values = {v: attr for attr, vals in S.ATTRIBUTES.items() for v in vals}
    for split in S.SPLITS:
        for r in read_jsonl(corpus.annotation_path("qa", split)):
            cues = {values[w]: w for w in S.tokenize_words(r["question"]) if w in values}
            assert r["answer_type"] not in cues and cues
            matches = [e for e in by_id[r["video_id"]].events if all(getattr(e, a) == w for a, w in cues.items())]
            assert len(matches) == 1
            assert getattr(matches[0], r["answer_type"]) == r["answer"]


def test_vocab_covers_every_word(corpus):
    vocab = set(corpus.vocab_path.read_text().split())
    texts = []
    for split in S.SPLITS:
        texts += [r["caption"] for r in read_jsonl(corpus.annotation_path("retrieval", split))]
        texts += [o for r in read_jsonl(corpus.annotation_path("mc", split)) for o in r["options"]]
        texts += [r["question"] + " " + r["answer"] for r in read_jsonl(corpus.annotation_path("qa", split))]
    used = {w for t in texts for w in S.tokenize_words(t)}
    assert used <= vocab
    assert {"red", "circle", "left", "then", ",", "?"} <= vocab


# ---------------------------------------------------------------------------------------------- pixels


def _spec(direction: str, **kw) -> S.VideoSpec:
    events = (S.Event("red", "square", direction, 0.5),
              S.Event("blue", "circle", "up" if direction != "up" else "down", 0.5))
    base = dict(video_id="v", split="train", ext="mp4", width=160, height=120, fps=10, num_frames=20,
                events=events, background=40, shape_size=36)
    return S.VideoSpec(**{**base, **kw})


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_one_frame_shows_the_direction_and_frames_show_the_motion(direction):
    spec = _spec(direction)
    frames = S.render_frames(spec)  # (T, H, W, 3)
    assert frames.shape == (20, 120, 160, 3) and frames.dtype == np.uint8
    dx, dy = S.DIRECTIONS[direction]
    red = np.array(S.COLORS["red"])
    centres = []
    for frame in frames[:10]:
        strength = np.clip((frame[..., 0].astype(float) - 40) / (red[0] - 40), 0, 1)  # (H, W) opacity
        solid = strength > 0.99
        ys, xs = np.mgrid[:120, :160]
        solid_c = np.array([xs[solid].mean(), ys[solid].mean()])
        faint = (strength > 0.05) & ~solid
        faint_c = np.array([xs[faint].mean(), ys[faint].mean()])
        trail = faint_c - solid_c
        assert trail @ np.array([dx, dy]) < -3  # the trail lies behind the shape
        centres.append(solid_c)
    travel = centres[-1] - centres[0]
    assert travel @ np.array([dx, dy]) > 20


def test_each_shape_is_visible_only_during_its_event():
    frames = S.render_frames(_spec("left")).astype(int)  # (T, H, W, 3)
    red_px = (frames[..., 0] > 150) & (frames[..., 2] < 100)  # (T, H, W)
    blue_px = (frames[..., 2] > 150) & (frames[..., 0] < 100)
    assert red_px[:10].any(axis=(1, 2)).all() and not red_px[10:].any()
    assert blue_px[10:].any(axis=(1, 2)).all() and not blue_px[:10].any()


@pytest.mark.parametrize("direction", ["left", "down"])
def test_yuv_frames_equal_the_converted_rgb_frames(direction):
    spec = _spec(direction)
    for rgb, yuv in zip(S.iter_rgb_frames(spec), S.iter_yuv_frames(spec)):
        assert yuv.shape == (180, 160) and yuv.dtype == np.uint8
        assert np.abs(yuv.astype(int) - S.rgb_to_yuv420p(rgb).astype(int)).max() <= 2


def test_rgb_to_yuv420p_known_values():
    frame = np.zeros((2, 2, 3), np.uint8)
    frame[:] = (255, 255, 255)
    assert S.rgb_to_yuv420p(frame).ravel().tolist() == [235, 235, 235, 235, 128, 128]
    frame[:] = (255, 0, 0)
    assert S.rgb_to_yuv420p(frame).ravel().tolist() == [81, 81, 81, 81, 90, 240]
    with pytest.raises(ValueError, match="even"):
        S.rgb_to_yuv420p(np.zeros((3, 2, 3), np.uint8))


@pytest.mark.parametrize("shape", S.SHAPES)
def test_shape_masks_are_distinct_and_large(shape):
    mask = S.shape_mask(shape, 32)
    assert mask.shape == (32, 32) and 0.0 <= mask.min() and mask.max() <= 1.0
    assert 0.25 * 32 * 32 < mask.sum() < 32 * 32
    for other in S.SHAPES:
        if other != shape:
            assert np.abs(mask - S.shape_mask(other, 32)).sum() > 0.1 * 32 * 32


# ---------------------------------------------------------------------------------------------- encoded videos


def test_videos_decode_with_expected_length_fps_and_size(corpus):
    for spec in corpus.videos:
        path = corpus.video_path(spec.video_id)
        frames, rate = decode_pyav(path)
        assert frames.shape == (spec.num_frames, spec.height, spec.width, 3), spec.video_id
        assert rate == pytest.approx(spec.fps)
        if spec.ext != "gif":  # decord does not open GIF
            vr = decord.VideoReader(str(path), num_threads=1)
            assert len(vr) == spec.num_frames and vr.get_avg_fps() == pytest.approx(spec.fps, rel=1e-3)
            assert vr[0].shape == (spec.height, spec.width, 3)


def test_decoded_pixels_match_the_rendering(corpus):
    for spec in corpus.videos:
        decoded, _ = decode_pyav(corpus.video_path(spec.video_id))
        assert psnr(decoded, S.render_frames(spec)) > 30, (spec.video_id, spec.ext)


def test_mixed_formats_present(corpus):
    assert {v.ext for v in corpus.videos} == {"mp4", "webm", "gif"}
    assert {p.suffix for p in (corpus.root / "videos").iterdir()} == {".mp4", ".webm", ".gif"}
    specs = S.draw_specs(S.SynthesisConfig(n_videos=1000, mixed_formats=True), np.random.default_rng(0))
    share = {ext: sum(v.ext == ext for v in specs) / 1000 for ext in ("gif", "webm")}
    assert share["gif"] == pytest.approx(0.15, abs=0.04) and share["webm"] == pytest.approx(0.15, abs=0.04)
    assert all(v.fps in S.GIF_FPS for v in specs if v.ext == "gif")


def test_videos_vary_in_duration_size_and_fps():
    specs = S.draw_specs(S.SynthesisConfig(n_videos=300), np.random.default_rng(0))
    durations = [v.duration_s for v in specs]
    assert 2.0 - 0.1 <= min(durations) < 3.0 and 11.0 < max(durations) <= 12.0 + 0.1
    assert {(v.width, v.height) for v in specs} == set(S.DEFAULT_SIZES)
    assert {v.fps for v in specs} == set(S.DEFAULT_FPS)
    for v in specs:
        assert 0.24 <= v.shape_size / min(v.width, v.height) <= 0.34


@pytest.mark.parametrize("name,codec,frames", [
    ("one.mp4", None, 1), ("short.mp4", "h264", 3), ("clip.webm", "vp9", 5), ("clip.gif", "gif", 5),
    ("clip.mp4", "av1", 4), ("clip.avi", "mpeg4", 4),
])
def test_write_video_helper(tmp_path, name, codec, frames):
    rng = np.random.default_rng(0)
    clip = np.repeat(rng.integers(0, 255, (frames, 1, 1, 3), dtype=np.uint8), 64, axis=1)
    clip = np.repeat(clip, 80, axis=2)  # (T, 64, 80, 3) flat colours
    path = S.write_video(tmp_path / name, clip, fps=10, codec=codec)
    decoded, rate = decode_pyav(path)
    assert decoded.shape == (frames, 64, 80, 3) and rate == pytest.approx(10)
    tolerance = 45 if name.endswith(".gif") else 12  # RGB GIFs use a coarse 3-3-2 palette
    assert np.abs(decoded.astype(int).mean(axis=(1, 2)) - clip[:, 0, 0].astype(int)).max() < tolerance


def test_write_video_faststart_puts_moov_first(tmp_path):
    clip = np.zeros((3, 32, 32, 3), np.uint8)
    late = S.write_video(tmp_path / "late.mp4", clip, fps=10).read_bytes()
    early = S.write_video(tmp_path / "early.mp4", clip, fps=10, faststart=True).read_bytes()
    assert late.index(b"moov") > late.index(b"mdat")
    assert early.index(b"moov") < early.index(b"mdat")


def test_write_video_rejects_nothing_and_unknown_extensions(tmp_path):
    with pytest.raises(ValueError, match="at least one frame"):
        S.write_video(tmp_path / "a.mp4", [], fps=10)
    with pytest.raises(ValueError, match="extension"):
        S.write_video(tmp_path / "a.xyz", np.zeros((1, 16, 16, 3), np.uint8), fps=10)


# ---------------------------------------------------------------------------------------------- job


def test_job_writes_a_corpus_and_refuses_to_overwrite(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthesize_job", Path(__file__).parents[1] / "jobs/synthesize.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    argv = ["--output", str(tmp_path), "--splits", "3,1,1", "--seed", "2", "--sizes", "64x48",
            "--fps", "10", "--min-duration", "2", "--max-duration", "2.5", "--qa-per-video", "6"]
    assert job.main(argv) == 0
    assert "videos: 5 (train 3, val 1, test 1)" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "txt/qa_train.jsonl")) == 18
    assert job.main(argv) == 2
    assert job.main(["--output", str(tmp_path / "x"), "--videos", "4", "--splits", "3,1,1"]) == 2
