"""Tests of clipbert/model/losses.py: clip consensus, the ITM / multiple-choice / QA / InfoNCE losses on tiny
hand-computed cases and against their formulas, match scores, margins and predictions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipbert.model.losses import (
    CLIP_DIM,
    consensus,
    contrastive_loss,
    itm_labels,
    itm_loss,
    itm_margins,
    itm_scores,
    mc_loss,
    predict,
    qa_loss,
    task_loss,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


# ----------------------------------------------------------------------------------------------- consensus
@pytest.mark.parametrize("how, expected", [
    ("mean", [2.0, 3.5]),
    ("max", [3.0, 5.0]),  # per class: the best clip of each class, not one clip's row
    ("lse", [3.0 + math.log(1 + math.exp(-2.0)), 5.0 + math.log(1 + math.exp(-3.0))]),
])
def test_consensus_pools_each_class_over_the_clips(how, expected):
    x = torch.tensor([[[[1.0, 5.0], [3.0, 2.0]]]])  # (B=1, K=1, N=2 clips, C=2)
    assert consensus(x, how).shape == (1, 1, 2)  # the clip axis CLIP_DIM is gone
    torch.testing.assert_close(consensus(x, how)[0, 0], torch.tensor(expected))


def test_lse_scale_is_an_inverse_temperature():
    x = torch.tensor([1.0, 3.0])
    torch.testing.assert_close(consensus(x, "lse", 0), torch.tensor(3.0 + math.log(1 + math.exp(-2.0))))
    torch.testing.assert_close(consensus(x, "lse", 0, scale=2.0), torch.tensor(3.0 + math.log(1 + math.exp(-4.0)) / 2))
    torch.testing.assert_close(consensus(x, "lse", 0, scale=1000.0), torch.tensor(3.0))  # towards the max
    torch.testing.assert_close(consensus(x, "max", 0, scale=2.0), torch.tensor(3.0))  # only "lse" reads the scale
    torch.testing.assert_close(consensus(x, "mean", 0, scale=2.0), torch.tensor(2.0))


def test_consensus_default_axis_is_the_clip_axis():
    x = torch.randn(2, 3, 4, 5)
    assert CLIP_DIM == 2
    torch.testing.assert_close(consensus(x, "mean"), x.mean(2))
    with pytest.raises(ValueError, match="consensus must be 'mean', 'max' or 'lse', got 'median'"):
        consensus(x, "median")


# ----------------------------------------------------------------------------------------------- losses
def test_itm_labels_make_text_0_the_positive():
    assert itm_labels(2, 3).tolist() == [[1, 0, 0], [1, 0, 0]]


def test_itm_loss_hand_computed():
    assert itm_loss(torch.zeros(1, 2, 3, 2)).item() == pytest.approx(LN2)  # undecided: ln 2
    logits = torch.tensor([[[[0.0, LN3]], [[LN3, 0.0]]]])  # (1, K=2, N=1, 2): each text right at 3:1
    assert itm_loss(logits).item() == pytest.approx(math.log(4 / 3))
    assert itm_loss(logits, torch.tensor([[0, 1]])).item() == pytest.approx(math.log(4))  # both wrong at 3:1


def test_mc_loss_hand_computed():
    logits = torch.tensor([[[[0.0], [0.0]], [[LN2], [LN2]], [[0.0], [0.0]]]])  # (1, K=3 options, N=2, 1)
    assert mc_loss(logits, torch.tensor([1])).item() == pytest.approx(LN2)  # mean: option 1 at 2 of 4
    assert mc_loss(logits, torch.tensor([0])).item() == pytest.approx(math.log(4))


def test_qa_loss_hand_computed():
    logits = torch.tensor([[[[0.0, 0.0, 0.0], [0.0, math.log(4.0), 0.0]]]])  # (1, 1, N=2, A=3)
    assert qa_loss(logits, torch.tensor([1]), "max").item() == pytest.approx(math.log(6 / 4))
    assert qa_loss(logits, torch.tensor([2]), "max").item() == pytest.approx(math.log(6))


@pytest.mark.parametrize("loss, shape, message", [
    (lambda x: itm_loss(x), (1, 2, 1, 3), r"ITM logits need 2 classes, got shape \(1, 2, 1, 3\)"),
    (lambda x: mc_loss(x, torch.tensor([0])), (1, 2, 1, 2), r"MC logits need 1 score per option, got shape"),
    (lambda x: qa_loss(x, torch.tensor([0])), (1, 2, 1, 3), r"QA logits need K=1 text per video, got shape"),
    (lambda x: task_loss("vqa", x, None, "mean"), (1, 1, 1, 2), r"unknown head 'vqa'"),
], ids=["itm", "mc", "qa", "head"])
def test_a_wrong_logit_shape_or_head_is_refused(loss, shape, message):
    with pytest.raises(ValueError, match=message):
        loss(torch.zeros(shape))


def test_task_loss_dispatches_by_head():
    itm, mc, qa = torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 1), torch.randn(2, 1, 2, 5)
    mc_labels, qa_labels = torch.tensor([3, 0]), torch.tensor([4, 1])
    torch.testing.assert_close(task_loss("itm", itm, None, "max"), itm_loss(itm, None, "max"))
    torch.testing.assert_close(task_loss("mc", mc, mc_labels, "mean"), mc_loss(mc, mc_labels, "mean"))
    torch.testing.assert_close(task_loss("qa", qa, qa_labels, "lse"), qa_loss(qa, qa_labels, "lse"))


def test_contrastive_loss_hand_computed():
    eye = torch.eye(2)  # two orthogonal pairs: each row's logits (scale, 0)
    assert contrastive_loss(eye, eye, 2.0).item() == pytest.approx(math.log(1 + math.exp(-2.0)))
    assert contrastive_loss(eye, eye.flip(0), 2.0).item() == pytest.approx(math.log(1 + math.exp(2.0)))


# ----------------------------------------------------------------------------------------------- scores
def test_itm_score_and_margin_hand_computed():
    logits = torch.tensor([[[[0.0, LN3], [0.0, LN3]], [[1.0, 2.0], [3.0, 6.0]]]])  # (1, K=2, N=2, 2)
    torch.testing.assert_close(itm_scores(logits, "max")[0, 0], torch.tensor(0.75))
    torch.testing.assert_close(itm_margins(logits, "mean"), torch.tensor([[LN3, 2.0]]))  # text 1: (4 - 2)
    assert predict("itm", logits, "mean").tolist() == [1]


def test_consensus_formulas():
    x = torch.randn(3, 2, 5, 4)
    torch.testing.assert_close(consensus(x, "mean", 2), x.sum(2) / 5)
    torch.testing.assert_close(consensus(x, "max", 2), torch.stack([x[:, :, i] for i in range(5)]).max(0).values)
    torch.testing.assert_close(consensus(x, "lse", 2), x.exp().sum(2).log())
    with pytest.raises(ValueError, match="consensus"):
        consensus(x, "median", 2)


@pytest.mark.parametrize("how", ["mean", "max", "lse"])
def test_itm_loss_is_ce_on_pooled_logits(how):
    logits = torch.randn(4, 2, 3, 2)
    labels = torch.tensor([[1, 0]] * 4)
    pooled = consensus(logits, how, 2).reshape(-1, 2)
    torch.testing.assert_close(itm_loss(logits, labels, how), F.cross_entropy(pooled, labels.reshape(-1)))
    torch.testing.assert_close(itm_loss(logits, None, how), itm_loss(logits, labels, how))


def test_lse_loss_equals_original_formula():
    logits = torch.randn(4, 5, 8, 1) * 3  # MC: (B, K options, N clips, 1)
    labels = torch.tensor([0, 3, 4, 1])
    per_clip = logits[..., 0].permute(0, 2, 1)  # (B, N, K), the original's layout
    out = torch.logsumexp(per_clip.reshape(4, -1), dim=-1, keepdim=True) - torch.logsumexp(per_clip, dim=1)
    original = torch.gather(out, -1, labels.view(-1, 1)).mean()
    torch.testing.assert_close(mc_loss(logits, labels, "lse"), original)
    lse_pooled = torch.logsumexp(per_clip, dim=1)  # (B, K)
    torch.testing.assert_close(mc_loss(logits, labels, "lse"), F.cross_entropy(lse_pooled, labels))
    qa_logits = torch.randn(3, 1, 4, 6)
    qa_labels = torch.tensor([5, 0, 2])
    torch.testing.assert_close(qa_loss(qa_logits, qa_labels, "lse"),
                               F.cross_entropy(torch.logsumexp(qa_logits[:, 0], 1), qa_labels))
    torch.testing.assert_close(task_loss("qa", qa_logits, qa_labels, "lse"), qa_loss(qa_logits, qa_labels, "lse"))


def test_scores_and_predictions():
    logits = torch.randn(2, 3, 4, 2)
    expected = torch.softmax(torch.logsumexp(logits, 2), -1)[..., 1]
    torch.testing.assert_close(itm_scores(logits, "lse"), expected)
    assert torch.equal(predict("itm", logits, "lse"), expected.argmax(-1))
    mc = torch.randn(2, 5, 4, 1)
    assert torch.equal(predict("mc", mc, "mean"), mc.mean(2)[..., 0].argmax(-1))
    qa = torch.randn(2, 1, 4, 9)
    assert torch.equal(predict("qa", qa, "max"), qa.amax(2)[:, 0].argmax(-1))


def test_contrastive_loss_formula():
    v = F.normalize(torch.randn(4, 8), dim=-1)
    t = F.normalize(torch.randn(4, 8), dim=-1)
    sim = 10.0 * v @ t.t()
    manual = sum(-torch.log_softmax(sim, 1)[i, i] - torch.log_softmax(sim, 0)[i, i] for i in range(4)) / 8
    torch.testing.assert_close(contrastive_loss(v, t, 10.0), manual)
    assert contrastive_loss(v, v, 100.0) < 0.01


def test_itm_margin_ranks_as_the_probability_without_saturating():
    logits = torch.tensor([[[[0.0, 40.0]], [[0.0, 50.0]]]])  # (1, 2, 1, 2): both probabilities round to 1.0
    assert itm_scores(logits, "lse")[0, 0] == itm_scores(logits, "lse")[0, 1]
    torch.testing.assert_close(itm_margins(logits, "lse"), torch.tensor([[40.0, 50.0]]))
