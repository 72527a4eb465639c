"""Tests of clipbert/data/batches.py: make_batch's keys, shapes and labels per task, the retrieval negatives it
draws (of other videos, one-word swaps), its seeding, and the stable video key."""

from __future__ import annotations

import numpy as np
import pytest

from clipbert.config import config_to_dict
from clipbert.data.annotations import load_annotations, load_ans2label
from clipbert.data.batches import BATCH_KEYS, draw_negatives, draw_swaps, make_batch, video_key
from clipbert.data.text import load_tokenizer, tokenize


# ------------------------------------------------------------------------------------------- make_batch
def test_make_batch_swap_negatives_differ_from_the_positive_in_one_word(tiny_corpus):
    cfg = tiny_corpus.config("synthetic_tiny", "data.itm_neg_size=1", "data.itm_swap_negatives=2")
    rows, _ = load_annotations(cfg.data.train_file)
    pool_videos = np.array([r["video_id"] for r in rows])
    pool_captions = np.array([r["texts"][0] for r in rows])
    out = make_batch(_columns(rows[:3]), cfg=config_to_dict(cfg), train=True, negatives=(pool_videos, pool_captions),
                     seed=0)
    assert out["input_ids"].shape[1] == 4  # positive, one random negative, two swaps
    for b in range(3):
        positive = out["input_ids"][b, 0]
        for j in (2, 3):
            assert int((out["input_ids"][b, j] != positive).sum()) == 1  # one word piece swapped
        assert not np.array_equal(out["input_ids"][b, 2], out["input_ids"][b, 3])


def _columns(rows: list[dict]) -> dict:
    """A Ray Data style column batch of annotation rows."""
    return {k: [r[k] for r in rows] for k in ("example_id", "video_id", "texts", "label")}


def _check_batch(out: dict, b: int, n: int, t: int, k: int, size: int, max_len: int) -> None:
    assert set(out) == set(BATCH_KEYS)
    assert out["frames"].shape == (b, n, t, 3, size, size) and out["frames"].dtype == np.uint8
    assert out["input_ids"].shape == (b, k, max_len) and out["input_ids"].dtype == np.int64
    assert out["attention_mask"].shape == (b, k, max_len) and out["attention_mask"].dtype == np.int64
    assert out["label"].shape == (b,) and out["label"].dtype == np.int64
    assert out["example_id"].shape == (b,) and out["example_id"].dtype == np.int64
    assert out["video_key"].shape == (b,) and out["video_key"].dtype == np.int64
    assert out["frames"].max() > 0


def test_make_batch_retrieval_draws_negatives_of_other_videos(tiny_corpus):
    cfg = tiny_corpus.config("synthetic_tiny", "data.itm_neg_size=3")
    rows, _ = load_annotations(cfg.data.train_file)
    rows = rows[:4]
    # a pool dominated by the batch's own videos: without the "other video" rule most draws would be wrong
    pool = rows * 20 + load_annotations(cfg.data.train_file)[0][4:6]
    pool_videos = np.array([r["video_id"] for r in pool])
    pool_captions = np.array([r["texts"][0] for r in pool])
    out = make_batch(_columns(rows), cfg=config_to_dict(cfg), train=True, negatives=(pool_videos, pool_captions),
                     seed=0)
    s = cfg.sampling
    _check_batch(out, 4, s.train_n_clips, s.frames_per_clip, 4, cfg.model.img_size, cfg.data.max_txt_len)
    assert out["label"].tolist() == [0, 0, 0, 0]  # the positive caption is text 0
    assert out["example_id"].tolist() == [r["example_id"] for r in rows]
    assert out["video_key"].tolist() == [video_key(r["video_id"]) for r in rows]
    assert len(set(out["video_key"].tolist())) == len({r["video_id"] for r in rows})
    tok = load_tokenizer(cfg.data.tokenizer)
    pool_ids = tokenize(tok, list(pool_captions), cfg.data.max_txt_len)["input_ids"]  # (P, L)
    owner = {tuple(ids): v for v, ids in zip(pool_videos, pool_ids)}
    for row, ids in zip(rows, out["input_ids"]):
        assert owner[tuple(ids[0])] == row["video_id"]
        assert all(owner[tuple(neg)] != row["video_id"] for neg in ids[1:])


def test_draw_negatives_never_picks_the_same_video():
    rng = np.random.default_rng(0)
    videos = np.array(["a"] * 50 + ["b", "c"])
    captions = np.array([f"a{i}" for i in range(50)] + ["b0", "c0"])
    negs = draw_negatives(["a", "b"], videos, captions, 5, rng)
    assert [len(n) for n in negs] == [5, 5]
    assert set(negs[0]) <= {"b0", "c0"}
    assert "b0" not in negs[1]


def test_make_batch_pads_frames_bottom_for_landscape_videos(tiny_corpus):
    cfg = tiny_corpus.config("synthetic_tiny")
    rows, _ = load_annotations(cfg.data.val_file)
    out = make_batch(_columns(rows[:2]), cfg=config_to_dict(cfg), train=False)
    size = cfg.model.img_size
    content = round(size * 120 / 160)  # 160x120 frames: longer side to S, the rest zero padding at the bottom
    assert out["frames"].shape[1] == cfg.sampling.inference_n_clips
    assert (out["frames"][..., content + 1:, :] == 0).all()
    assert out["frames"][..., : content - 1, :].mean() > 1


def test_make_batch_multiple_choice(tiny_corpus):
    cfg = tiny_corpus.config("tiny_mc", "data.frame_store=frames", "data.tokenizer=tokenizer",
                             "data.train_file=txt/mc_train.jsonl", "data.val_file=txt/mc_val.jsonl")
    rows, _ = load_annotations(cfg.data.val_file)
    out = make_batch(_columns(rows[:3]), cfg=config_to_dict(cfg), train=True, seed=1)
    s = cfg.sampling
    _check_batch(out, 3, s.train_n_clips, s.frames_per_clip, 5, cfg.model.img_size, cfg.data.max_txt_len)
    assert out["label"].tolist() == [r["label"] for r in rows[:3]]  # the answer option, untouched
    texts = tokenize(load_tokenizer(cfg.data.tokenizer), rows[0]["texts"], cfg.data.max_txt_len)["input_ids"]
    np.testing.assert_array_equal(out["input_ids"][0], texts)


def test_make_batch_open_ended_qa(tiny_corpus):
    cfg = tiny_corpus.config("synthetic_tiny_qa")
    ans2label = load_ans2label(cfg.data.ans2label_file)
    rows, _ = load_annotations(cfg.data.train_file, ans2label=ans2label)
    out = make_batch(_columns(rows[:4]), cfg=config_to_dict(cfg), train=True, seed=2)
    s = cfg.sampling
    _check_batch(out, 4, s.train_n_clips, s.frames_per_clip, 1, cfg.model.img_size, cfg.data.max_txt_len)
    assert out["label"].tolist() == [ans2label[r["answer"]] for r in rows[:4]]


def test_make_batch_draws_fresh_clips_unless_seeded(tiny_corpus):
    cfg = config_to_dict(tiny_corpus.config("synthetic_tiny"))
    rows, _ = load_annotations(tiny_corpus.root / "txt" / "retrieval_train.jsonl")
    batch = _columns(rows[:4])
    fresh = [make_batch(batch, cfg=cfg, train=True)["frames"] for _ in range(2)]
    assert not np.array_equal(*fresh)
    seeded = [make_batch(batch, cfg=cfg, train=True, seed=5)["frames"] for _ in range(2)]
    np.testing.assert_array_equal(*seeded)
    inference = [make_batch(batch, cfg=cfg, train=False)["frames"] for _ in range(2)]
    np.testing.assert_array_equal(*inference)  # uniform clips: the same every time


def test_make_batch_refuses_rows_with_different_numbers_of_texts(tiny_corpus):
    cfg = tiny_corpus.config("synthetic_tiny")
    rows, _ = load_annotations(cfg.data.val_file)
    rows = [{**rows[0], "texts": ["a red circle"]}, {**rows[1], "texts": ["a red circle", "a blue square"]}]
    with pytest.raises(ValueError, match=r"rows of one batch must have the same number of texts, got \[1, 2\]"):
        make_batch(_columns(rows), cfg=config_to_dict(cfg), train=False)


def test_make_batch_draws_no_negatives_outside_training(tiny_corpus):
    cfg = tiny_corpus.config("synthetic_tiny", "data.itm_neg_size=3")
    rows, _ = load_annotations(cfg.data.val_file)
    pool = (np.array([r["video_id"] for r in rows]), np.array([r["texts"][0] for r in rows]))
    out = make_batch(_columns(rows[:2]), cfg=config_to_dict(cfg), train=False, negatives=pool)
    assert out["input_ids"].shape[1] == 1 and out["label"].tolist() == [r["label"] for r in rows[:2]]


# ------------------------------------------------------------------------------------------- negatives
def test_draw_negatives_is_seeded():
    videos = np.array([f"v{i // 2}" for i in range(20)])
    captions = np.array([f"caption {i}" for i in range(20)])
    draws = [draw_negatives(["v0", "v3"], videos, captions, 4, np.random.default_rng(seed)) for seed in (7, 7, 8)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    assert all(len(n) == 4 for n in draws[0])
    assert not {"caption 0", "caption 1"} & set(draws[0][0]) and not {"caption 6", "caption 7"} & set(draws[0][1])


SWAP_POOL = (np.array(["v0", "v0", "v1", "v2"]),
             np.array(["a red circle moves left", "a blue circle moves left", "a red square moves up",
                       "a green cross moves down"]))


def test_draw_swaps_change_one_word_and_never_give_an_own_caption():
    positive = "a red circle moves left"
    swaps = draw_swaps(["v0"], [positive], *SWAP_POOL, 2, np.random.default_rng(0))[0]
    assert len(swaps) == 2 and len(set(swaps)) == 2
    for text in swaps:
        assert sum(a != b for a, b in zip(text.split(), positive.split())) == 1
    assert "a red square moves left" in swaps  # "red" -> "blue" would be v0's own second caption
    assert set(swaps) <= {"a red square moves left", "a red circle moves up", "a red circle moves down"}


def test_draw_swaps_top_up_with_captions_of_other_videos():
    swaps = draw_swaps(["v0", "v2"], ["a red circle moves left", "zzz"], *SWAP_POOL, 3, np.random.default_rng(1))
    assert [len(s) for s in swaps] == [3, 3]
    assert swaps[0][2] in {"a red square moves up", "a green cross moves down"}  # two swappable words, then one
    assert set(swaps[1]) <= {"a red circle moves left", "a blue circle moves left", "a red square moves up"}


# ------------------------------------------------------------------------------------------- video key
def test_video_key_is_a_stable_signed_64_bit_hash():
    assert video_key("video00001") == -4662735236204254330  # the same in every process and run
    assert video_key("video00001") == video_key("video00001") != video_key("video00002")
    assert all(-2**63 <= video_key(v) < 2**63 for v in ("", "a", "x" * 1000))
