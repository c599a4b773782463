"""A small transformer text tower over word ids (pad id 0).

Token and learned position embeddings, the same pre-norm blocks as the image tower (with a key
padding mask), mean pooling over the non-pad tokens, and a projection to the shared embedding
size. Building the vocabulary and turning captions into ids is the data side's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from jestkit.models.vit import Block, keep_count, uniform_noise

PAD_ID = 0


@dataclass
class TextConfig:
    """Text tower shape. vocab_size counts the pad id 0."""

    vocab_size: int
    max_len: int = 16
    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    embed_dim: int = 128

    def __post_init__(self):
        if self.vocab_size < 2:
            raise ValueError(
                f"vocab_size must be at least 2 (pad + one word), got {self.vocab_size}"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")


class TextTower(nn.Module):
    """forward(tokens (N, L) long, L <= max_len, pad id 0) -> (N, embed_dim), unnormalised."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=PAD_ID)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.max_len, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.embed_dim)

    def forward(
        self,
        tokens: torch.Tensor,
        token_drop: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """token_drop: a cheaper view for scoring: keep round((1 - r) * L) of the L positions of
        every caption (pads are dropped first, then words at random, drawn from `generator`);
        the kept tokens keep their own position embeddings."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (N, L), got shape {tuple(tokens.shape)}")
        n, length = tokens.shape
        if length > self.cfg.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.cfg.max_len}")
        valid = tokens != PAD_ID  # (N, L)
        # An all-pad row (an empty caption) attends to every position rather than to nothing,
        # which would give NaN; its pooled output is then the mean over all positions.
        empty = ~valid.any(dim=1, keepdim=True)
        key_mask = valid | empty
        keep = keep_count(length, token_drop)  # validates the rate before any work
        x = self.token_embed(tokens) + self.pos_embed[:, :length]
        if keep < length:
            x, key_mask = drop_text_tokens(x, key_mask, keep, generator)
        for block in self.blocks:
            x = block(x, key_mask)
        x = self.norm(x)
        weights = key_mask.to(x.dtype)[:, :, None]
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1)
        return self.head(pooled)


def drop_text_tokens(
    x: torch.Tensor, key_mask: torch.Tensor, keep: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep `keep` of the L positions of each row of x (N, L, D): every attendable token
    (key_mask True) ranks above every pad, ties broken at random; kept positions stay in order.
    A caption with at most `keep` words loses only pads, so its embedding is unchanged."""
    n, length, d = x.shape
    priority = key_mask.to(x.dtype) + uniform_noise((n, length), generator, x.device)
    idx = priority.topk(keep, dim=1).indices.sort(dim=1).values
    return x.gather(1, idx[:, :, None].expand(n, keep, d)), key_mask.gather(1, idx)
