"""Tests for the ClipBERT model: shapes, CNN input, clip-embedding pooling, batching, training steps, freezing."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from clipbert.config import ModelConfig, OptimConfig, load_config
from clipbert.model.clipbert import ClipBert, ClipBertOutput, aggregate_clip_embeddings
from clipbert.model.losses import contrastive_loss, itm_loss, task_loss
from clipbert.model.optim import build_optimizer

S = 64  # 64 px -> 2x2 grid with the micro ResNet below


def micro_cfg(**kw) -> ModelConfig:
    base = dict(img_size=S, resnet_layer_type="basic", resnet_depths=(1, 1, 1), resnet_hidden_sizes=(8, 16, 32),
                resnet_embedding_size=8, vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=16, num_answers=7, contrastive=True, embed_dim=16)
    base.update(kw)
    return ModelConfig(**base)


def make_batch(b=2, n=2, t=2, k=2, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, n, t, 3, S, S), generator=g, dtype=torch.uint8)
    ids = torch.randint(5, 50, (b, k, length), generator=g)
    ids[..., 0] = 2
    mask = torch.ones(b, k, length, dtype=torch.long)
    mask[:, :, length - 2:] = 0
    ids[mask == 0] = 0
    return frames, ids, mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ClipBert(micro_cfg()).eval()


# ----------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("head, k, classes", [("itm", 2, 2), ("mc", 5, 1), ("qa", 1, 7)])
@pytest.mark.parametrize("n, t", [(1, 1), (1, 2), (4, 1), (4, 2)])
def test_output_shapes_every_head(head, k, classes, n, t):
    torch.manual_seed(0)
    m = ClipBert(micro_cfg(head=head, contrastive=False)).eval()
    frames, ids, mask = make_batch(b=2, n=n, t=t, k=k)
    with torch.no_grad():
        logits = m(frames, ids, mask)
    assert logits.shape == (2, k, n, classes)
    assert torch.isfinite(logits).all()


def test_full_size_token_grid_on_meta():
    cfg = load_config("msrvtt_ret").model
    with torch.device("meta"):
        m = ClipBert(cfg)
        assert m.encode_grid(torch.zeros(1, 2, 2, 3, 448, 448)).shape == (1, 2, 7, 7, 768)  # 49 tokens
        assert m.encode_grid(torch.zeros(1, 1, 1, 3, 768, 768)).shape == (1, 1, 12, 12, 768)  # 144 tokens
        logits = m(torch.zeros(2, 8, 2, 3, 448, 448), torch.zeros(2, 2, 20, dtype=torch.long),
                   torch.ones(2, 2, 20, dtype=torch.long))
    assert logits.shape == (2, 2, 8, 2)
    assert m.classifier[0].weight.shape == (1536, 768) and m.cnn.grid_encoder[0].weight.shape == (768, 2048, 3, 3)


def test_return_embeddings(model):
    frames, ids, mask = make_batch()
    with torch.no_grad():
        out = model(frames, ids, mask, return_embeddings=True)
    assert isinstance(out, ClipBertOutput)
    assert out.video_embeds.shape == (2, 16) and out.text_embeds.shape == (2, 16)
    torch.testing.assert_close(out.video_embeds.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        torch.testing.assert_close(out.video_embeds, model.encode_video(frames))
        torch.testing.assert_close(out.text_embeds, model.encode_text(ids[:, 0], mask[:, 0]))
        clips = model.encode_clips(frames)
    torch.testing.assert_close(out.video_embeds, F.normalize(clips.mean(1), dim=-1))
    assert math.isclose(out.logit_scale.item(), 1 / 0.07, rel_tol=1e-5)


def test_hard_negatives_pair_each_row_with_another_video(model):
    frames, ids, mask = make_batch(b=3, k=2)
    same = torch.eye(3, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # rows 0 and 1 show the same video: their only candidate is row 2
    with torch.no_grad():
        plain = model(frames, ids, mask)
        torch.manual_seed(0)
        out = model(frames, ids, mask, return_embeddings=True, hard_negatives=same)
        grid = model.encode_grid(frames)
        text_of_2 = model.score_grid(grid[:2], ids[2:3, :1].expand(2, 1, -1), mask[2:3, :1].expand(2, 1, -1))
        clips_of_2 = model.score_grid(grid[2:3].expand(2, *grid.shape[1:]), ids[:2, :1], mask[:2, :1])
    assert out.logits.shape == (3, 4, 2, 2)  # K=2 given texts + hard negative text + hard negative video
    torch.testing.assert_close(out.logits[:, :2], plain)
    torch.testing.assert_close(out.logits[:2, 2:3], text_of_2)  # video 0/1 scored with the caption of row 2
    torch.testing.assert_close(out.logits[:2, 3:4], clips_of_2)  # caption 0/1 scored on the clips of row 2
    assert torch.isfinite(out.logits).all()


def test_no_contrastive_heads_is_an_error():
    m = ClipBert(micro_cfg(contrastive=False))
    with pytest.raises(RuntimeError, match="contrastive"):
        m.encode_video(make_batch()[0])


# ----------------------------------------------------------------------------------------------- bad input
def test_bad_frames_and_text(model):
    frames, ids, mask = make_batch()
    with pytest.raises(ValueError, match=r"\(B, N, T, 3, S, S\)"):
        model(frames[:, 0], ids, mask)  # rank 5
    with pytest.raises(ValueError, match="3 RGB channels"):
        model(frames[:, :, :, :2], ids, mask)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        long_ids = torch.ones(2, 2, 17, dtype=torch.long)
        model(frames, long_ids, torch.ones_like(long_ids))
    with pytest.raises(ValueError, match="text rows"):
        model(frames, ids[:1], mask[:1])
    with pytest.raises(ValueError, match=r"\(B, K, L\)"):
        model(frames, ids, mask[:, :, :4])


def test_cnn_normalises_rgb_then_flips_to_bgr(model):
    x = torch.randint(0, 256, (2, 3, S, S), dtype=torch.uint8)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    bgr = (x.float() - mean)[:, [2, 1, 0]]
    with torch.no_grad():
        r = model.cnn.resnet
        expected = model.cnn.grid_encoder(r.encoder(r.embedder(bgr)).last_hidden_state)
        torch.testing.assert_close(model.cnn(x), expected)
        torch.testing.assert_close(model.cnn(x.float()), expected)  # uint8 and float inputs agree


# ----------------------------------------------------------------------------------------------- embeddings
def test_aggregate_clip_embeddings_of_equal_clips_is_the_clip():
    v = F.normalize(torch.randn(4, 8), dim=-1)
    torch.testing.assert_close(aggregate_clip_embeddings(torch.stack([v, v], 1)), v)


# ----------------------------------------------------------------------------------------------- batching
def test_batched_clips_equal_loop_over_clips(model):
    frames, ids, mask = make_batch(b=2, n=3, t=2, k=2)
    with torch.no_grad():
        batched = model(frames, ids, mask)  # (B, K, N, C)
        looped = torch.cat([model(frames[:, i:i + 1], ids, mask) for i in range(3)], dim=2)
    torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-5)


def test_texts_share_visual_features_like_separate_calls(model):
    frames, ids, mask = make_batch(b=2, n=2, t=1, k=3)
    with torch.no_grad():
        together = model(frames, ids, mask)
        apart = torch.cat([model(frames, ids[:, j:j + 1], mask[:, j:j + 1]) for j in range(3)], dim=1)
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5)


def test_padding_tokens_are_ignored(model):
    frames, ids, mask = make_batch(b=1, n=1, t=1, k=1)
    other = ids.clone()
    other[mask == 0] = 7  # change only padded positions
    with torch.no_grad():
        torch.testing.assert_close(model(frames, ids, mask), model(frames, other, mask))


# ----------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("head, k", [("itm", 2), ("qa", 1), ("mc", 3)])
def test_few_steps_drive_loss_down(head, k):
    torch.manual_seed(0)
    cfg = micro_cfg(head=head, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, contrastive=False)
    m = ClipBert(cfg).train()
    frames, ids, mask = make_batch(b=4, n=2, t=1, k=k, seed=1)
    labels = {"itm": None, "qa": torch.tensor([1, 3, 5, 1]), "mc": torch.tensor([0, 2, 1, 0])}[head]
    opt = build_optimizer(m, OptimConfig(lr=5e-3, cnn_lr=5e-3))
    losses = []
    for _ in range(15):
        loss = task_loss(head, m(frames, ids, mask), labels, "lse")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses


def test_frozen_parts_bit_identical_after_step():
    torch.manual_seed(0)
    m = ClipBert(micro_cfg(resnet_depths=(1, 1, 1))).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = build_optimizer(m, OptimConfig(lr=1e-2, cnn_lr=1e-2))
    frames, ids, mask = make_batch(seed=2)
    out = m(frames, ids, mask, return_embeddings=True)
    loss = itm_loss(out.logits) + contrastive_loss(out.video_embeds, out.text_embeds, out.logit_scale)
    loss.backward()
    opt.step()
    after = m.state_dict()
    frozen = [k for k in before if k.startswith(("cnn.resnet.embedder.", "cnn.resnet.encoder.stages.0."))
              or "normalization" in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    trainable_conv = "cnn.resnet.encoder.stages.1.layers.0.layer.0.convolution.weight"
    assert not torch.equal(before[trainable_conv], after[trainable_conv])
    assert not torch.equal(before["cnn.grid_encoder.0.weight"], after["cnn.grid_encoder.0.weight"])
    assert all(not mod.training for mod in m.cnn.modules() if isinstance(mod, torch.nn.BatchNorm2d))


def test_freeze_switches():
    m = ClipBert(micro_cfg(freeze_at=0))
    assert m.cnn.resnet.embedder.embedder.convolution.weight.requires_grad
    m = ClipBert(micro_cfg(freeze_cnn=True))
    assert not any(p.requires_grad for p in m.cnn.resnet.parameters())
    assert m.cnn.grid_encoder[0].weight.requires_grad


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    cfg = micro_cfg(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    a = ClipBert(cfg).train()
    b = ClipBert(dataclasses.replace(cfg, gradient_checkpointing=True)).train()
    b.load_state_dict(a.state_dict())
    frames, ids, mask = make_batch(seed=3)
    for m in (a, b):
        itm_loss(m(frames, ids, mask)).backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert b.bert.is_activation_checkpointing and b.cnn.gradient_checkpointing


def test_autocast_bf16_on_cpu():
    torch.manual_seed(0)
    m = ClipBert(micro_cfg()).train()
    frames, ids, mask = make_batch(seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(frames, ids, mask, return_embeddings=True)
        loss = itm_loss(out.logits) + contrastive_loss(out.video_embeds, out.text_embeds, out.logit_scale)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    assert m.cnn.grid_encoder[0].weight.grad is not None and torch.isfinite(m.cnn.grid_encoder[0].weight.grad).all()
