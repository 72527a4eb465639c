"""The ClipBERT model: ResNet grid encoder + BERT cross-modal encoder + task heads, all clips in one pass.

Faithful to the original (REFERENCE.md section 1): ResNet-50 (stride in the 1x1, BN frozen, stem and res2
frozen) -> grid encoder conv3x3 2048->D, max-pool 2, ReLU (stride 64) -> mean over the T frames of a clip ->
row/col position + visual token type embeddings, LayerNorm, dropout -> [text tokens ; visual tokens] with
the text mask plus ones -> BERT encoder -> pooler -> dropout -> MLP D->2D->C.

Tensor conventions: frames (B, N, T, 3, S, S) RGB, uint8 or float in 0-255, already resized and padded to
S = img_size (``clips.resize_and_pad``); texts (B, K, L) = K texts per video (retrieval: 1 positive + negatives;
MC: one per option; QA: 1). The CNN runs once per clip frame for all B*N*T frames in one call; visual
tokens are expanded (no copy) across the K texts and text embeddings across the N clips before one BERT
pass over all B*K*N (text, clip) sequences. ``forward`` returns per-clip logits (B, K, N, C); consensus
over N and the losses live in clipbert.model.losses.

Beyond the original: contrastive projection heads (``encode_text``, ``encode_video``) for a FAISS first
stage. A clip embedding is ``video_proj(mean of the clip's grid tokens)``, L2-normalised; a video embedding
is the mean of its N normalised clip embeddings, renormalised (``aggregate_clip_embeddings``). A text
embedding is ``text_proj`` of the [CLS] state of a text-only BERT pass, L2-normalised.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig, BertModel, ResNetConfig, ResNetModel

from clipbert.config import ModelConfig

logger = logging.getLogger(__name__)

INIT_STD = 0.02  # BERT initializer_range, used for every new (non-pretrained) layer


# ----------------------------------------------------------------------------------------------- modules
def resnet_config(cfg: ModelConfig) -> ResNetConfig:
    """transformers ResNetConfig equivalent to detectron2's R-50 (or the tiny basic-block variant)."""
    return ResNetConfig(
        num_channels=3, embedding_size=cfg.resnet_embedding_size, hidden_sizes=list(cfg.resnet_hidden_sizes),
        depths=list(cfg.resnet_depths), layer_type=cfg.resnet_layer_type, hidden_act="relu",
        downsample_in_first_stage=False, downsample_in_bottleneck=cfg.downsample_in_bottleneck,
    )


def bert_config(cfg: ModelConfig) -> BertConfig:
    """transformers BertConfig of the cross-modal encoder."""
    return BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act, hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, initializer_range=INIT_STD, pad_token_id=0,
        attn_implementation="sdpa",
    )


def init_bert_style(module: nn.Module) -> None:
    """BertPreTrainedModel._init_weights: Linear/Embedding N(0, 0.02), zero bias, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=INIT_STD)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class GridFeatBackbone(nn.Module):
    """ResNet (frozen BN, frozen stem+res2) + grid encoder: normalised RGB frames -> (M, D, h, w) grid."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.resnet = ResNetModel(resnet_config(cfg))
        self.grid_encoder = nn.Sequential(
            nn.Conv2d(cfg.resnet_hidden_sizes[-1], cfg.hidden_size, kernel_size=3, padding=1, bias=False),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.ReLU(),
        )
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.bgr = cfg.input_format == "BGR"
        self.gradient_checkpointing = cfg.gradient_checkpointing
        blocks = self.blocks()
        self.num_frozen = len(blocks) if cfg.freeze_cnn else min(max(cfg.freeze_at, 0), len(blocks))
        for module in blocks[: self.num_frozen]:
            module.requires_grad_(False)
        for module in self.resnet.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.requires_grad_(False)

    def blocks(self) -> list[nn.Module]:
        """The ResNet in order: stem (detectron2 "stem"), then one stage per res2, res3, ..."""
        return [self.resnet.embedder, *self.resnet.encoder.stages]

    def train(self, mode: bool = True) -> "GridFeatBackbone":
        """Switch modes but keep every BatchNorm in eval mode (frozen statistics, as detectron2 FrozenBN)."""
        super().train(mode)
        for module in self.resnet.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (M, 3, S, S) RGB 0-255 -> grid (M, D, S/64, S/64)."""
        x = (pixels.float() - self.pixel_mean) / self.pixel_std  # (M, 3, S, S), RGB mean, std 1
        if self.bgr:
            x = x.flip(1)  # RGB -> BGR, as detectron2 expects
        blocks = self.blocks()
        with torch.no_grad():  # frozen prefix: no parameter needs a gradient and no activation is kept
            for module in blocks[: self.num_frozen]:
                x = module(x)
        for module in blocks[self.num_frozen:]:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(module, x, use_reentrant=False)
            else:
                x = module(x)
        return self.grid_encoder(x)  # (M, D, h, w)


class VisualInputEmbedding(nn.Module):
    """Row/col position + visual token type embeddings and LayerNorm on a clip's (T-pooled) grid."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.hidden_size
        self.row_position_embeddings = nn.Embedding(cfg.max_grid_row_position_embeddings, d)
        self.col_position_embeddings = nn.Embedding(cfg.max_grid_col_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(1, d)
        self.LayerNorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.pixel_random_sampling_size = cfg.pixel_random_sampling_size

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """grid (M, h, w, D) -> visual tokens (M, h*w, D) after LayerNorm (dropout is the caller's)."""
        m, h, w, d = grid.shape
        if h > self.row_position_embeddings.num_embeddings or w > self.col_position_embeddings.num_embeddings:
            raise ValueError(f"grid {h}x{w} exceeds the row/col position tables")
        rows = self.row_position_embeddings(torch.arange(h, device=grid.device))  # (h, D)
        cols = self.col_position_embeddings(torch.arange(w, device=grid.device))  # (w, D)
        x = grid + rows[:, None, :] + cols[None, :, :]  # (M, h, w, D)
        x = x.reshape(m, h * w, d)  # (M, V, D)
        k = self.pixel_random_sampling_size
        if self.training and 0 < k < h * w:
            keep = torch.randperm(h * w, device=grid.device)[:k].sort().values  # same tokens for the whole batch
            x = x[:, keep]  # (M, k, D)
        x = x + self.token_type_embeddings.weight[0]  # (M, V, D)
        return self.LayerNorm(x)


class ProjectionHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear: pooled grid features -> contrastive embedding space."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(d_in, eps=eps)
        self.dense = nn.Linear(d_in, d_in)
        self.out = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.dense(self.LayerNorm(x))))


class MaskedLMHead(nn.Module):
    """BERT's MLM prediction head: dense -> GELU -> LayerNorm -> decoder tied to the word embeddings, plus a bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """hidden (P, D), word embedding table (vocab, D) -> token logits (P, vocab)."""
        return F.linear(self.LayerNorm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)


class ClipBertOutput(NamedTuple):
    """forward(..., return_embeddings=True) result."""

    logits: torch.Tensor  # (B, K, N, C) per-clip logits
    video_embeds: torch.Tensor  # (B, E) L2-normalised video embeddings (clip mean, renormalised)
    text_embeds: torch.Tensor  # (B, E) L2-normalised embeddings of text 0 of each row (the positive)
    logit_scale: torch.Tensor  # () InfoNCE multiplier exp(log_scale), clamped to <= 100


class PretrainOutput(NamedTuple):
    """forward(..., mlm_mask=...) result: the pretraining heads' logits, and the contrastive embeddings when asked."""

    mlm_logits: torch.Tensor  # (P, vocab) at the P masked text positions, in (B, K, N, L) order
    itm_logits: torch.Tensor  # (B, K, N, 2) per-clip image-text matching logits
    video_embeds: torch.Tensor | None = None  # (B, E) L2-normalised image (clip) embeddings
    text_embeds: torch.Tensor | None = None  # (B, E) L2-normalised embeddings of embed_text
    logit_scale: torch.Tensor | None = None  # () InfoNCE multiplier


def aggregate_clip_embeddings(clip_embeds: torch.Tensor) -> torch.Tensor:
    """(B, N, E) normalised clip embeddings -> (B, E): mean over clips, L2-renormalised."""
    return F.normalize(clip_embeds.mean(1), dim=-1)  # (B, E)


class ClipBert(nn.Module):
    """ClipBERT with one task head ("itm", "mc", "qa" or "pretrain") and optional contrastive heads.

    The "pretrain" head is the original's ``BertPreTrainingHeads``: a 2-way ITM layer on the pooled output (as
    ``classifier``) and an MLM head on the text positions (``mlm_head``); finetuning from such a checkpoint
    starts its own task head afresh (the pretrained ITM layer is not reused, as in the original)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.cnn = GridFeatBackbone(cfg)
        self.bert = BertModel(bert_config(cfg), add_pooling_layer=True)
        self.visual_embeddings = VisualInputEmbedding(cfg)
        self.embedding_dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        if cfg.head == "pretrain":
            self.classifier = nn.Linear(d, 2)  # seq_relationship: ITM on the pooled output
            self.mlm_head = MaskedLMHead(cfg)
            init_bert_style(self.mlm_head)
        else:
            self.classifier = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, self.num_labels))
        init_bert_style(self.visual_embeddings)
        init_bert_style(self.classifier)
        if cfg.contrastive:
            self.text_proj = nn.Linear(d, cfg.embed_dim)
            self.video_proj = ProjectionHead(d, cfg.embed_dim, cfg.layer_norm_eps)
            init_bert_style(self.text_proj)
            init_bert_style(self.video_proj)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.logit_scale_init)))
        self.set_gradient_checkpointing(cfg.gradient_checkpointing)

    @property
    def num_labels(self) -> int:
        """C: 2 for "itm" and "pretrain", 1 for "mc", num_answers for "qa"."""
        return {"itm": 2, "pretrain": 2, "mc": 1, "qa": self.cfg.num_answers}[self.cfg.head]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute BERT layers and the trainable ResNet stages in the backward pass (saves activation memory)."""
        self.cnn.gradient_checkpointing = enabled
        if enabled:
            self.bert.activation_checkpointing_enable({"use_reentrant": False})
        elif self.bert.is_activation_checkpointing:
            self.bert.activation_checkpointing_disable()

    # -------------------------------------------------------------------------------- visual side
    def encode_grid(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, N, T, 3, S, S) -> clip grids (B, N, h, w, D): CNN on all B*N*T frames, mean over T."""
        if frames.ndim != 6 or frames.shape[3] != 3:
            raise ValueError(f"frames must be (B, N, T, 3, S, S) with 3 RGB channels, got {tuple(frames.shape)}")
        b, n, t = frames.shape[:3]
        grid = self.cnn(frames.reshape(b * n * t, *frames.shape[3:]))  # (B*N*T, D, h, w)
        grid = grid.view(b * n, t, *grid.shape[1:]).mean(1)  # (B*N, D, h, w): temporal mean pooling
        grid = grid.permute(0, 2, 3, 1)  # (B*N, h, w, D)
        return grid.reshape(b, n, *grid.shape[1:])  # (B, N, h, w, D)

    def embed_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """Clip grids (B, N, h, w, D) -> L2-normalised clip embeddings (B, N, E) (needs contrastive heads)."""
        self._need_contrastive()
        pooled = grid.mean(dim=(2, 3))  # (B, N, D): mean over the h*w grid
        return F.normalize(self.video_proj(pooled), dim=-1)  # (B, N, E)

    def encode_clips(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, N, T, 3, S, S) -> normalised clip embeddings (B, N, E)."""
        return self.embed_grid(self.encode_grid(frames))

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, N, T, 3, S, S) -> L2-normalised video embeddings (B, E) (mean of clip embeddings)."""
        return aggregate_clip_embeddings(self.encode_clips(frames))

    # -------------------------------------------------------------------------------- text side
    def text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(M, L) token ids -> (M, L, D): word + position + type-0 embeddings, LayerNorm, no dropout."""
        emb = self.bert.embeddings
        length = input_ids.shape[1]
        positions = emb.position_ids[:, :length]  # (1, L)
        x = emb.word_embeddings(input_ids) + emb.position_embeddings(positions)  # (M, L, D)
        x = x + emb.token_type_embeddings.weight[0]  # (M, L, D): token type 0 everywhere
        return emb.LayerNorm(x)

    def encode_sequence(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT encoder + pooler on ready embeddings (M, S, D) with a 0/1 key mask (M, S)."""
        attn = mask.bool()[:, None, None, :]  # (M, 1, 1, S): True = attend (SDPA boolean key mask)
        hidden = self.bert.encoder(embeds, attention_mask=attn).last_hidden_state  # (M, S, D)
        return hidden, self.bert.pooler(hidden)  # (M, S, D), (M, D)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) text -> (B, E) L2-normalised embedding of the text-only [CLS] state (needs contrastive heads)."""
        self._need_contrastive()
        self._check_text(input_ids[:, None], attention_mask[:, None], input_ids.shape[0])
        embeds = self.embedding_dropout(self.text_embeddings(input_ids))  # (B, L, D)
        hidden, _ = self.encode_sequence(embeds, attention_mask)
        return F.normalize(self.text_proj(hidden[:, 0]), dim=-1)  # (B, E)

    # -------------------------------------------------------------------------------- cross-modal
    def score_grid(self, grid: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Clip grids (B, N, h, w, D) x texts (B, K, L) -> per-clip logits (B, K, N, C), one BERT pass."""
        b, n = grid.shape[:2]
        _, pooled = self.cross_encode(grid, input_ids, attention_mask)  # (B*K*N, D)
        logits = self.classifier(self.dropout(pooled))  # (B*K*N, C)
        return logits.view(b, input_ids.shape[1], n, -1)  # (B, K, N, C)

    def cross_encode(self, grid: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip grids (B, N, h, w, D) x texts (B, K, L) -> hidden states (B*K*N, L+V, D) of every (text, clip)
        sequence, text positions first, and their pooled outputs (B*K*N, D)."""
        b, n = grid.shape[:2]
        k, length = input_ids.shape[1:]
        d = grid.shape[-1]
        visual = self.visual_embeddings(grid.flatten(0, 1))  # (B*N, V, D)
        v = visual.shape[1]
        visual = visual.view(b, 1, n, v, d).expand(b, k, n, v, d)  # (B, K, N, V, D), no copy
        text = self.text_embeddings(input_ids.flatten(0, 1))  # (B*K, L, D)
        text = text.view(b, k, 1, length, d).expand(b, k, n, length, d)  # (B, K, N, L, D), no copy
        embeds = torch.cat([text, visual], dim=3).view(b * k * n, length + v, d)  # (B*K*N, L+V, D)
        embeds = self.embedding_dropout(embeds)  # independent masks per (text, clip) row, as the original
        text_mask = attention_mask[:, :, None, :].expand(b, k, n, length)  # (B, K, N, L)
        visual_mask = attention_mask.new_ones(b, k, n, v)  # (B, K, N, V)
        mask = torch.cat([text_mask, visual_mask], dim=3).view(b * k * n, length + v)  # (B*K*N, L+V)
        return self.encode_sequence(embeds, mask)  # (B*K*N, L+V, D), (B*K*N, D)

    def forward(
        self,
        frames: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        return_embeddings: bool = False,
        hard_negatives: torch.Tensor | None = None,
        mlm_mask: torch.Tensor | None = None,
        embed_text: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | ClipBertOutput | PretrainOutput:
        """Score K texts against the N clips of each of B videos.

        Args:
            frames: (B, N, T, 3, S, S) RGB uint8/float 0-255, resized and padded to S.
            input_ids: (B, K, L) token ids ([CLS] ... [SEP] [PAD]...), L <= max_position_embeddings.
            attention_mask: (B, K, L) 1 for real tokens, 0 for padding.
            return_embeddings: also return the contrastive embeddings (video, text 0 of each row) and the
                InfoNCE scale, computed from the same CNN pass (needs model.contrastive).
            hard_negatives: (B, B) bool, True where rows i and j show the same video; when given (with
                return_embeddings), two in-batch negatives per row are scored too and appended to the K texts:
                text 0 of another row drawn for video i, and text 0 of row i against the clips of another video,
                both drawn with probability softmax(contrastive similarity) over the other videos (ALBEF).
            mlm_mask: (B, K, L) bool, pretraining only: True at the text positions whose token is predicted.
            embed_text: pretraining with return_embeddings: the (B, L) ids and mask of the text embedded for each
                image (an unmasked caption of it).

        Returns:
            per-clip logits (B, K, N, C), or a ClipBertOutput when return_embeddings, or with mlm_mask a
            PretrainOutput.
        """
        self._check_text(input_ids, attention_mask, frames.shape[0] if frames.ndim == 6 else -1)
        grid = self.encode_grid(frames)  # (B, N, h, w, D)
        if mlm_mask is not None:
            mlm_logits, itm_logits = self.pretrain_logits(grid, input_ids, attention_mask, mlm_mask)
            if not return_embeddings:
                return PretrainOutput(mlm_logits, itm_logits)
            video = aggregate_clip_embeddings(self.embed_grid(grid))  # (B, E)
            text = self.encode_text(*embed_text)  # (B, E)
            return PretrainOutput(mlm_logits, itm_logits, video, text, self.logit_scale.exp().clamp(max=100.0))
        logits = self.score_grid(grid, input_ids, attention_mask)  # (B, K, N, C)
        if not return_embeddings:
            return logits
        video = aggregate_clip_embeddings(self.embed_grid(grid))  # (B, E)
        text = self.encode_text(input_ids[:, 0], attention_mask[:, 0])  # (B, E)
        scale = self.logit_scale.exp().clamp(max=100.0)
        if hard_negatives is not None:
            negatives = self.hard_negative_logits(grid, video, text, input_ids[:, 0], attention_mask[:, 0],
                                                  hard_negatives, scale)  # (B, 2, N, C)
            logits = torch.cat([logits, negatives], dim=1)  # (B, K+2, N, C)
        return ClipBertOutput(logits, video, text, scale)

    def pretrain_logits(self, grid: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        mlm_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grids (B, N, h, w, D) x texts (B, K, L) -> (MLM logits (P, vocab) at the P True positions of mlm_mask
        (B, K, L) for each of the N clips, in (B, K, N, L) order; ITM logits (B, K, N, 2)), one BERT pass."""
        if self.cfg.head != "pretrain":
            raise RuntimeError(f"pretraining outputs need model.head='pretrain', this model has {self.cfg.head!r}")
        b, n = grid.shape[:2]
        k, length = input_ids.shape[1:]
        hidden, pooled = self.cross_encode(grid, input_ids, attention_mask)  # (B*K*N, L+V, D), (B*K*N, D)
        picked = mlm_mask[:, :, None, :].expand(b, k, n, length).reshape(b * k * n, length)  # (B*K*N, L)
        text_hidden = hidden[:, :length][picked]  # (P, D)
        mlm_logits = self.mlm_head(text_hidden, self.bert.embeddings.word_embeddings.weight)  # (P, vocab)
        itm_logits = self.classifier(self.dropout(pooled)).view(b, k, n, 2)  # (B, K, N, 2)
        return mlm_logits, itm_logits

    def hard_negative_logits(self, grid: torch.Tensor, video: torch.Tensor, text: torch.Tensor,
                             input_ids: torch.Tensor, attention_mask: torch.Tensor, same_video: torch.Tensor,
                             scale: torch.Tensor) -> torch.Tensor:
        """Per-clip logits (B, 2, N, C) of each video with a hard negative caption, and of each caption with a hard
        negative video, drawn from the other videos of the batch by softmax(scale * cosine similarity).

        grid (B, N, h, w, D); video, text (B, E) normalised; input_ids, attention_mask (B, L) the positives;
        same_video (B, B) bool, symmetric; a batch of a single video has nothing to draw from (callers skip it).
        """
        with torch.no_grad():
            sim = scale * video.float() @ text.float().t()  # (B, B): video i x text j
            sim = sim.masked_fill(same_video & ~same_video.all(1, keepdim=True), float("-inf"))
            text_pick = torch.multinomial(torch.softmax(sim, dim=1), 1)[:, 0]  # (B,) caption for video i
            video_pick = torch.multinomial(torch.softmax(sim.t(), dim=1), 1)[:, 0]  # (B,) video for caption i
        with_text = self.score_grid(grid, input_ids[text_pick, None], attention_mask[text_pick, None])  # (B, 1, N, C)
        with_video = self.score_grid(grid[video_pick], input_ids[:, None], attention_mask[:, None])  # (B, 1, N, C)
        return torch.cat([with_text, with_video], dim=1)  # (B, 2, N, C)

    # -------------------------------------------------------------------------------- checks
    def _check_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch: int) -> None:
        if input_ids.ndim != 3 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids/attention_mask must both be (B, K, L), got {tuple(input_ids.shape)} "
                             f"and {tuple(attention_mask.shape)}")
        if batch >= 0 and input_ids.shape[0] != batch:
            raise ValueError(f"{input_ids.shape[0]} text rows for {batch} videos")
        if input_ids.shape[-1] > self.cfg.max_position_embeddings:
            raise ValueError(f"text length {input_ids.shape[-1]} exceeds max_position_embeddings "
                             f"{self.cfg.max_position_embeddings}; truncate with clipbert.data.text.tokenize")

    def _need_contrastive(self) -> None:
        if not self.cfg.contrastive:
            raise RuntimeError("this model has no contrastive heads: build it with model.contrastive=True")
