import numpy as np

from clipbert.training.evaluation import RERANK_DEPTHS, choose_fuse_weight, fused_metrics
from clipbert.model.scoring import FUSE_WEIGHTS, fuse

GT = np.arange(4)


def test_fuse_adds_the_weighted_dual_score():
    np.testing.assert_allclose(fuse(np.array([[1.0, -2.0]]), np.array([[0.5, 0.25]]), 4.0), [[3.0, -1.0]])


def test_the_weight_is_the_smallest_that_ranks_best():
    cross = np.zeros((4, 4))  # the cross-encoder ties everything: the dual encoder decides
    itc = np.eye(4)
    assert choose_fuse_weight(cross, itc, GT) == min(w for w in FUSE_WEIGHTS if w > 0)
    cross = 10 * np.eye(4)  # a perfect cross-encoder: no dual share needed
    assert choose_fuse_weight(cross, np.zeros((4, 4)), GT) == 0.0


def test_fused_metrics_keep_a_given_weight_and_score_every_depth():
    cross, itc = np.eye(4), np.eye(4)[::-1].copy()  # dual encoder wrong everywhere
    out = fused_metrics(cross, itc, GT, weight=0.0)
    assert out["fuse_weight"] == 0.0 and out["fused_t2v_r1"] == 100.0
    for d in RERANK_DEPTHS:  # 4 videos: every depth covers the gallery, so re-ranking fixes everything
        assert out[f"rerank{d}_t2v_r1"] == 100.0 and out[f"rerank{d}_itm_t2v_r1"] == 100.0
    out = fused_metrics(cross, itc, GT, weight=32.0)  # the dual encoder outvotes the cross-encoder
    assert out["fused_t2v_r1"] == 0.0
