"""Tests for clipbert.model.scoring: candidate-pair cross-encoder scores equal the all-pairs ones, dual embeddings."""

import numpy as np
import pytest
import torch

from clipbert.model.checkpoint import build_model
from clipbert.training.evaluation import retrieval_scores
from clipbert.model.scoring import chunks, clip_embeddings, pair_scores, text_embeddings, tokenize_texts, video_grids

CPU = torch.device("cpu")
CAPTIONS = ["a red circle moves left", "a blue square moves up", "a green cross moves down"]


@pytest.fixture(scope="module")
def scored(tiny_corpus):
    cfg = tiny_corpus.config()
    torch.manual_seed(0)
    model, _ = build_model(cfg.model)
    model.eval()
    videos = list(tiny_corpus.val_ids)
    scores, itc = retrieval_scores(model, cfg, videos, CAPTIONS, CPU)
    return model, cfg, videos, scores, itc


def test_pair_scores_equal_all_pairs(scored):
    model, cfg, videos, scores, _ = scored
    pairs = np.array([(t, v) for t in range(len(CAPTIONS)) for v in range(len(videos))])
    got = pair_scores(model, cfg, CAPTIONS, videos, pairs, CPU, video_batch_size=3, pair_batch_size=5)
    np.testing.assert_allclose(got.reshape(scores.shape), scores, atol=1e-5)


def test_pair_scores_of_a_subset_in_any_order(scored):
    model, cfg, videos, scores, _ = scored
    pairs = np.array([(2, 3), (0, 1), (2, 0), (0, 1)])
    got = pair_scores(model, cfg, CAPTIONS, videos, pairs, CPU)
    np.testing.assert_allclose(got, scores[pairs[:, 0], pairs[:, 1]], atol=1e-5)
    assert pair_scores(model, cfg, CAPTIONS, videos, np.zeros((0, 2)), CPU).shape == (0,)


def test_dual_similarities_are_inner_products_of_unit_embeddings(scored):
    model, cfg, videos, _, itc = scored
    ids, mask = tokenize_texts(cfg, CAPTIONS, CPU)
    text = text_embeddings(model, ids, mask, "fp32", batch_size=2)
    assert text.shape == (3, cfg.model.embed_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    grids = [clip_embeddings(model, g) for _, g in video_grids(model, cfg, videos, CPU, batch_size=3)]
    clips = torch.cat([c for c, _ in grids])
    video = torch.cat([v for _, v in grids])
    assert clips.shape == (len(videos), cfg.sampling.inference_n_clips, cfg.model.embed_dim)
    np.testing.assert_allclose((text @ video.t()).numpy(), itc, atol=1e-5)


def test_chunks_cover_the_range():
    assert chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert chunks(0, 3) == []
