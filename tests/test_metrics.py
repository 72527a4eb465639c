"""Tests for retrieval and QA metrics against hand-computed examples, ties included."""

import numpy as np
import pytest

from clipbert.training.metrics import mc_accuracy, qa_accuracy, retrieval_metrics, two_stage_t2v_r1


def test_retrieval_perfect_diagonal():
    m = retrieval_metrics(np.eye(4) + 0.01, [0, 1, 2, 3])
    assert m["t2v_r1"] == 100.0 and m["v2t_r1"] == 100.0
    assert m["t2v_medr"] == 1.0 and m["t2v_meanr"] == 1.0


def test_retrieval_hand_computed():
    scores = np.array([
        [0.9, 0.1, 0.2],   # text 0 -> video 0: rank 1
        [0.8, 0.3, 0.5],   # text 1 -> video 1: 0.8, 0.5 above -> rank 3
        [0.1, 0.7, 0.6],   # text 2 -> video 2: 0.7 above -> rank 2
    ])
    m = retrieval_metrics(scores, [0, 1, 2])
    assert m["t2v_r1"] == pytest.approx(100 / 3) and m["t2v_r5"] == 100.0
    assert m["t2v_medr"] == 2.0 and m["t2v_meanr"] == 2.0
    # v2t: video 0 column [0.9,0.8,0.1] text0 rank 1; video 1 column [0.1,0.3,0.7] text1 rank 2;
    # video 2 column [0.2,0.5,0.6] text2 rank 1
    assert m["v2t_r1"] == pytest.approx(200 / 3) and m["v2t_meanr"] == pytest.approx(4 / 3)


def test_retrieval_ties_are_pessimistic():
    scores = np.full((3, 3), 0.5)
    m = retrieval_metrics(scores, [0, 1, 2])
    assert m["t2v_r1"] == 0.0 and m["t2v_medr"] == 3.0 and m["v2t_meanr"] == 3.0
    scores = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9], [0.0, 0.0, 1.0]])
    m = retrieval_metrics(scores, [0, 1, 2])
    # text0 ties with video1 -> rank 2; text1 ties with video2 -> rank 2; text2 rank 1
    assert m["t2v_r1"] == pytest.approx(100 / 3) and m["t2v_meanr"] == pytest.approx(5 / 3)


def test_retrieval_several_captions_per_video():
    # texts 0,1 describe video 0; text 2 describes video 1; video 2 has no caption (left out of v2t)
    scores = np.array([
        [0.2, 0.9, 0.1],  # t2v rank 2
        [0.8, 0.1, 0.3],  # t2v rank 1
        [0.4, 0.5, 0.6],  # t2v rank 2
    ])
    m = retrieval_metrics(scores, [0, 0, 1])
    assert m["t2v_r1"] == pytest.approx(100 / 3) and m["t2v_meanr"] == pytest.approx(5 / 3)
    # video 0 column [0.2, 0.8, 0.4]: caption 1 rank 1 -> best 1; video 1 column [0.9, 0.1, 0.5]: text2 rank 2
    assert m["v2t_r1"] == 50.0 and m["v2t_meanr"] == 1.5 and m["v2t_medr"] == 1.5


def test_retrieval_recall_at_k_with_many_videos():
    n = 20
    scores = -np.abs(np.arange(n)[None, :] - np.arange(n)[:, None]).astype(float)  # diagonal best
    scores[0] = np.linspace(1, 0, n)  # text 0's video (col 0) best anyway
    scores[1, :] = 0.0
    scores[1, 1] = -1.0  # video 1 is last for text 1 -> rank 20
    m = retrieval_metrics(scores, np.arange(n))
    assert m["t2v_r1"] == 95.0 and m["t2v_r10"] == 95.0 and m["t2v_meanr"] == pytest.approx((19 + 20) / 20)


@pytest.mark.parametrize("scores, gt, match", [
    (np.zeros((2, 2)), [0], "shape"), (np.zeros((2, 2)), [0, 2], "columns"),
    (np.array([[np.nan, 0.0]]), [0], "NaN"),
])
def test_retrieval_bad_input(scores, gt, match):
    with pytest.raises(ValueError, match=match if match != "shape" else "must be"):
        retrieval_metrics(scores, gt)


def test_qa_accuracy_per_type():
    pred = ["cat", "two", "red", "dog", "3"]
    gold = ["cat", "two", "blue", "cat", "3"]
    types = ["object", "number", "color", "object", "number"]
    m = qa_accuracy(pred, gold, types)
    assert m["overall_acc"] == 60.0
    assert m["object_acc"] == 50.0 and m["number_acc"] == 100.0 and m["color_acc"] == 0.0
    assert qa_accuracy([1, 2], [1, 3]) == {"overall_acc": 50.0}
    with pytest.raises(ValueError):
        qa_accuracy([1], [1, 2])


def test_mc_accuracy():
    assert mc_accuracy(np.array([0, 4, 2, 1]), [0, 4, 1, 1]) == {"mc_acc": 75.0}
    with pytest.raises(ValueError):
        mc_accuracy([], [])


def test_two_stage_r1_reranks_only_the_first_stage_candidates():
    first = np.array([[0.9, 0.8, 0.1],  # gt 2 is outside the top 2: a miss at depth 2 whatever the re-ranker says
                      [0.9, 0.8, 0.1],  # gt 1 is in the top 2 and the re-ranker puts it first
                      [0.9, 0.8, 0.1]])  # gt 0 is first by the dual encoder, the re-ranker demotes it
    rerank = np.array([[0.0, 0.0, 9.0],
                       [0.0, 5.0, 9.0],  # video 2's high score does not count: it is not a candidate
                       [1.0, 2.0, 0.0]])
    gt = np.array([2, 1, 0])
    assert two_stage_t2v_r1(rerank, first, gt, 2) == pytest.approx(100 / 3)
    assert two_stage_t2v_r1(rerank, first, gt, 3) == pytest.approx(100 / 3)  # all pairs: only text 0 right
    assert two_stage_t2v_r1(rerank, first, gt, 1) == pytest.approx(100 / 3)  # depth 1 is the dual encoder's R@1
    assert two_stage_t2v_r1(np.zeros((3, 3)), first, gt, 1) == pytest.approx(100 / 3)


def test_two_stage_r1_ties_are_pessimistic():
    first = np.array([[0.5, 0.5]])
    assert two_stage_t2v_r1(np.array([[1.0, 0.0]]), first, np.array([0]), 1) == 0.0  # tied at depth 1
    assert two_stage_t2v_r1(np.array([[1.0, 1.0]]), first, np.array([0]), 2) == 0.0  # tied after re-ranking
    assert two_stage_t2v_r1(np.array([[1.0, 0.0]]), first, np.array([0]), 2) == 100.0
