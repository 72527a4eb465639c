"""Tests for clipbert.data.annotations: every annotation format, skipped-line reporting, answer vocabularies, ITM negatives."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from clipbert.data import annotations as data

OPTS = ["a dog runs", "a cat sleeps", "a man sings", "a car drives", "a bird flies"]


def write_jsonl(path: Path, items: list) -> Path:
    """Write items one per line; str items are written verbatim (to make broken lines)."""
    path.write_text("".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items))
    return path


FORMAT_CASES = [
    # (task, line, expected video_id, texts, label, answer_type, answer)
    ("msrvtt_ret", {"clip_name": "video1", "caption": "a dog runs", "sen_id": 3},
     "video1", ["a dog runs"], 1, "", ""),
    ("didemo_ret", {"clip_name": "v_d", "caption": "first. second."}, "v_d", ["first. second."], 1, "", ""),
    ("anet_ret", {"clip_name": "v_a", "caption": ["one.", "two."]}, "v_a", ["one. two."], 1, "", ""),
    ("msrvtt_qa", {"video_id": "video7", "question": "what is it?", "answer": "dog", "answer_type": "what"},
     "video7", ["what is it?"], 0, "what", "dog"),
    ("msrvtt_mc", {"qid": 4, "clip_name": "video9", "options": OPTS, "answer": 2},
     "video9", OPTS, 2, "", "a man sings"),
    ("tgif_qa_action", {"gif_name": "tumblr_x", "question": "what does he do?", "options": OPTS, "answer": 4},
     "tumblr_x", [f"what does he do? {o}" for o in OPTS], 4, "", "a bird flies"),
    ("tgif_qa_transition", {"gif_name": "tumblr_y", "question": "then?", "options": OPTS, "answer": 0},
     "tumblr_y", [f"then? {o}" for o in OPTS], 0, "", "a dog runs"),
    ("tgif_qa_frameqa", {"gif_name": "tumblr_z", "question": "what color?", "answer": "red", "answer_type": "color"},
     "tumblr_z", ["what color?"], 1, "color", "red"),
]
ANS2LABEL = {"dog": 0, "red": 1}


@pytest.mark.parametrize("task,line,video_id,texts,label,answer_type,answer", FORMAT_CASES)
def test_each_format_reads_into_the_row_schema(tmp_path, task, line, video_id, texts, label, answer_type, answer):
    path = write_jsonl(tmp_path / "a.jsonl", [line, line])
    rows, report = data.load_annotations(path, task=task, ans2label=ANS2LABEL)
    assert report.num_rows == 2 and report.num_skipped == 0 and report.format_name == task
    assert [r["example_id"] for r in rows] == [0, 1]
    assert tuple(rows[0]) == data.ROW_KEYS
    assert rows[0] == {"example_id": 0, "video_id": video_id, "texts": texts, "label": label,
                       "answer_type": answer_type, "answer": answer}


DETECT_CASES = [
    ({"clip_name": "v", "caption": "c"}, "msrvtt_ret"),
    ({"video_id": "v", "question": "q", "answer": "a", "answer_type": "what"}, "msrvtt_qa"),
    ({"clip_name": "v", "options": OPTS, "answer": 1, "qid": 0}, "msrvtt_mc"),
    ({"gif_name": "g", "question": "q", "options": OPTS, "answer": 1}, "tgif_qa_action"),
    ({"gif_name": "g", "question": "q", "answer": "a", "answer_type": "color"}, "tgif_qa_frameqa"),
]


@pytest.mark.parametrize("line,expected", DETECT_CASES)
def test_format_is_detected_from_the_fields(tmp_path, line, expected):
    path = write_jsonl(tmp_path / "a.jsonl", ["{broken", line])
    rows, report = data.load_annotations(path)
    assert report.format_name == expected and len(rows) == 1


def test_unknown_format_name_and_undetectable_file_raise(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"foo": 1}])
    with pytest.raises(ValueError, match="unknown annotation format 'nope'"):
        data.load_annotations(path, task="nope")
    with pytest.raises(ValueError, match="cannot detect"):
        data.load_annotations(path)
    assert data.get_format("TGIF_frameqa").name == "tgif_qa_frameqa"


def test_broken_lines_and_unknown_ids_are_counted_with_line_numbers(tmp_path, caplog):
    good = {"clip_name": "video1", "caption": "ok"}
    lines = [
        good,
        '{"clip_name": "video1", "caption": ',  # line 2: bad JSON
        {"clip_name": "video1"},  # line 3: missing caption
        {"clip_name": 7, "caption": "x"},  # line 4: wrong type
        "",  # line 5: blank, ignored
        {"clip_name": "video404", "caption": "x"},  # line 6: not in the frame store
        [1, 2],  # line 7: not an object
        good,
    ]
    path = write_jsonl(tmp_path / "ret.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="clipbert.data.annotations"):
        rows, report = data.load_annotations(path, task="msrvtt_ret", known_video_ids={"video1"})
    assert [r["example_id"] for r in rows] == [0, 1]
    assert report.num_lines == 7 and report.num_rows == 2
    assert report.skipped == {"bad_json": 1, "missing_field": 1, "wrong_type": 2, "unknown_video": 1}
    assert report.problems[0].startswith(f"{path}:2: bad JSON")
    assert report.problems[1] == f"{path}:3: missing field 'caption'"
    assert report.problems[2] == f"{path}:4: field 'clip_name' should be a string, got int"
    assert report.problems[3] == f"{path}:6: video id 'video404' is not in the frame store"
    assert f"{path}:6:" in caplog.text and "unknown_video: 1" in caplog.text


def test_only_the_first_few_problems_are_quoted(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ["{bad"] * 9 + [{"clip_name": "v", "caption": "c"}])
    _, report = data.load_annotations(path, task="msrvtt_ret")
    assert report.skipped == {"bad_json": 9}
    assert len(report.problems) == data.MAX_SHOWN_PROBLEMS
    assert report.problems[-1].startswith(f"{path}:{data.MAX_SHOWN_PROBLEMS}:")


MC_BAD = [
    ({"clip_name": "v", "options": OPTS[:4], "answer": 1}, "wrong_option_count", "expected 5 options, got 4"),
    ({"clip_name": "v", "options": OPTS, "answer": "1"}, "wrong_type", "field 'answer' should be an int, got str"),
    ({"clip_name": "v", "options": OPTS, "answer": True}, "wrong_type", "field 'answer' should be an int, got bool"),
    ({"clip_name": "v", "options": OPTS, "answer": 5}, "answer_out_of_range", "answer 5 is not an index"),
    ({"clip_name": "v", "options": [1, 2, 3, 4, 5], "answer": 0}, "wrong_type", "should hold strings"),
]


@pytest.mark.parametrize("line,reason,detail", MC_BAD)
def test_malformed_multiple_choice_lines(tmp_path, line, reason, detail):
    good = {"clip_name": "v", "options": OPTS, "answer": 0}
    path = write_jsonl(tmp_path / "mc.jsonl", [good, line])
    rows, report = data.load_annotations(path, task="msrvtt_mc")
    assert len(rows) == 1 and report.skipped == {reason: 1}
    assert report.problems[0].startswith(f"{path}:2: ") and detail in report.problems[0]


def test_nothing_left_raises_naming_file_and_reasons(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", ["{bad", {"video_id": "video1", "question": "q", "answer": "a"}])
    with pytest.raises(ValueError) as err:
        data.load_annotations(path, task="msrvtt_qa", known_video_ids={"video2"})
    msg = str(err.value)
    assert str(path) in msg and "bad_json: 1" in msg and "unknown_video: 1" in msg and f"{path}:2:" in msg
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl"):
        data.load_annotations(empty, task="msrvtt_ret")


def qa_rows(tmp_path: Path, answers: list[str]) -> list[data.Row]:
    items = [{"video_id": f"v{i}", "question": "q?", "answer": a, "answer_type": "what"} for i, a in enumerate(answers)]
    return data.load_annotations(write_jsonl(tmp_path / "qa.jsonl", items), task="msrvtt_qa")[0]


def test_ans2label_build_save_load_and_unseen_answer(tmp_path):
    rows = qa_rows(tmp_path, ["dog", "cat", "dog", "red", "cat", "dog"])
    assert [r["label"] for r in rows] == [-1] * 6  # no vocabulary given yet
    vocab = data.build_ans2label(rows)
    assert vocab == {"dog": 0, "cat": 1, "red": 2}
    assert data.build_ans2label(rows, min_count=2) == {"dog": 0, "cat": 1}
    data.save_ans2label(vocab, tmp_path / "ans2label.json")
    assert data.load_ans2label(tmp_path / "ans2label.json") == vocab
    labelled = data.apply_ans2label(rows, data.build_ans2label(rows, min_count=2))
    assert [r["label"] for r in labelled] == [0, 1, 0, -1, 1, 0]
    assert rows[3]["label"] == -1 and labelled[3]["answer"] == "red"
    test_rows = data.load_annotations(write_jsonl(tmp_path / "t.jsonl", [
        {"video_id": "v", "question": "q", "answer": "unicorn", "answer_type": "what"},
        {"video_id": "v", "question": "q", "answer": "cat", "answer_type": "what"}]), ans2label=vocab)[0]
    assert [r["label"] for r in test_rows] == [-1, 1]


def test_num_answer_labels_pads_like_the_original(tmp_path):
    vocab = {"a": 0, "b": 1, "c": 2}
    assert data.num_answer_labels(vocab) == 3
    assert data.num_answer_labels(vocab, task="msrvtt_qa") == 1500
    assert data.num_answer_labels(vocab, task="tgif_qa_frameqa") == 1540
    assert data.num_answer_labels({f"w{i}": i for i in range(2000)}, task="msrvtt_qa") == 2000


def test_load_ans2label_rejects_bad_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"x": 0, "y": 0}))
    with pytest.raises(ValueError, match="distinct"):
        data.load_ans2label(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps(["x"]))
    with pytest.raises(ValueError, match="JSON object"):
        data.load_ans2label(tmp_path / "b.json")


def retrieval_rows(num_videos: int, captions_per_video: int) -> list[data.Row]:
    return [data.Row(example_id=i, video_id=f"video{i // captions_per_video}", texts=[f"caption {i}"], label=1,
                     answer_type="", answer="") for i in range(num_videos * captions_per_video)]


@pytest.mark.parametrize("num_videos,per_video,neg_size", [(2, 1, 1), (5, 4, 1), (30, 3, 3)])
def test_negatives_come_from_other_videos(num_videos, per_video, neg_size):
    rows = retrieval_rows(num_videos, per_video)
    owner = {r["texts"][0]: r["video_id"] for r in rows}
    for epoch in range(5):
        out = data.add_itm_negatives(rows, data.epoch_rng(0, epoch), neg_size=neg_size)
        for before, after in zip(rows, out):
            assert after["label"] == 0 and after["texts"][0] == before["texts"][0]
            assert len(after["texts"]) == 1 + neg_size
            assert all(owner[t] != before["video_id"] for t in after["texts"][1:])
    assert all(len(r["texts"]) == 1 and r["label"] == 1 for r in rows)  # inputs untouched


def test_negatives_deterministic_per_seed_and_fresh_per_epoch():
    rows = retrieval_rows(50, 2)
    negs = lambda rng: [r["texts"][1] for r in data.add_itm_negatives(rows, rng)]  # noqa: E731
    assert negs(data.epoch_rng(42, 0)) == negs(data.epoch_rng(42, 0))
    assert negs(data.epoch_rng(42, 0)) != negs(data.epoch_rng(42, 1))
    assert negs(data.epoch_rng(42, 1)) != negs(data.epoch_rng(7, 1))
    drawn = {t for e in range(10) for t in negs(data.epoch_rng(42, e))}
    assert len(drawn) > 90  # negatives are spread over (nearly) all 100 captions


def test_negatives_need_two_videos_and_single_caption_rows():
    with pytest.raises(ValueError, match="two different videos"):
        data.add_itm_negatives(retrieval_rows(1, 3), data.epoch_rng(0, 0))
    twice = data.add_itm_negatives(retrieval_rows(3, 1), data.epoch_rng(0, 0))
    with pytest.raises(ValueError, match="exactly one caption"):
        data.add_itm_negatives(twice, data.epoch_rng(0, 1))


def test_retrieval_eval_lists():
    rows = [data.Row(example_id=i, video_id=v, texts=[f"c{i}"], label=1, answer_type="", answer="")
            for i, v in enumerate(["b", "a", "b", "c", "a"])]
    video_ids, captions, gt = data.retrieval_eval_lists(rows)
    assert video_ids == ["b", "a", "c"]
    assert captions == ["c0", "c1", "c2", "c3", "c4"]
    assert gt.dtype == np.int64 and gt.tolist() == [0, 1, 0, 2, 1]


def test_read_video_list_from_ids_or_jsonl(tmp_path, caplog):
    from clipbert.data.annotations import read_video_list

    plain = tmp_path / "ids.txt"
    plain.write_text("# gallery\nvideo1\n\nvideo2\nvideo1\n")
    assert read_video_list(plain) == ["video1", "video2"]
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text('{"clip_name": "a", "caption": "x"}\n{"video_id": "b"}\n{"caption": "none"}\n{broken\n')
    assert read_video_list(jsonl) == ["a", "b"]
    assert "2 lines name no video (lines [3, 4])" in caplog.text
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.txt names no video"):
        read_video_list(tmp_path / "empty.txt")


@pytest.mark.parametrize("task, line, reason", [
    ("msrvtt_ret", {"clip_name": "v", "caption": 42}, "wrong_type"),  # a number as caption
    ("msrvtt_ret", {"clip_name": "v", "caption": ""}, "empty_text"),
    ("msrvtt_ret", {"clip_name": "v", "caption": "  \t "}, "empty_text"),
    ("msrvtt_qa", {"video_id": "v", "question": "", "answer": "dog"}, "empty_text"),
    ("msrvtt_mc", {"clip_name": "v", "options": [*OPTS[:4], ""], "answer": 0}, "empty_text"),
])
def test_wrong_types_and_empty_texts_are_skipped_and_counted(tmp_path, task, line, reason):
    good = {"msrvtt_ret": {"clip_name": "v", "caption": "a dog runs"},
            "msrvtt_qa": {"video_id": "v", "question": "what?", "answer": "dog"},
            "msrvtt_mc": {"clip_name": "v", "options": OPTS, "answer": 0}}[task]
    rows, report = data.load_annotations(write_jsonl(tmp_path / "a.jsonl", [good, line]), task=task)
    assert len(rows) == 1 and report.skipped == {reason: 1} and report.problems[0].startswith(f"{tmp_path}/a.jsonl:2")


def test_a_ten_thousand_word_caption_is_kept_and_truncated_by_tokenisation(tmp_path):
    from clipbert.data.text import load_tokenizer, tokenize, write_vocab

    caption = " ".join(["dog"] * 10_000)
    rows, _ = data.load_annotations(write_jsonl(tmp_path / "a.jsonl", [{"clip_name": "v", "caption": caption}]))
    tokenizer = load_tokenizer(write_vocab(["dog"], tmp_path / "tok"))
    ids = tokenize(tokenizer, rows[0]["texts"], 20)["input_ids"]
    assert ids.shape == (1, 20) and tokenizer.convert_ids_to_tokens(ids[0])[-1] == "[SEP]"


def test_a_test_answer_outside_the_vocabulary_counts_as_wrong(tmp_path):
    """Even a model that always predicts the right label when it can scores 2 of 3: the unseen answer is wrong."""
    from clipbert.training.metrics import qa_accuracy

    items = [{"video_id": "v", "question": "q", "answer": a, "answer_type": "what"} for a in ("dog", "red", "unicorn")]
    rows, _ = data.load_annotations(write_jsonl(tmp_path / "t.jsonl", items), ans2label=ANS2LABEL)
    labels = [r["label"] for r in rows]
    best_possible = [max(label, 0) for label in labels]  # an argmax over the head is never -1
    assert labels == [0, 1, -1]
    assert qa_accuracy(best_possible, labels)["overall_acc"] == pytest.approx(200 / 3)
