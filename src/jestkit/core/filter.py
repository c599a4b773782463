"""Offline filtering by the reference's image-text similarity: DataComp's "CLIP score" filter.

Score every pair once with the reference (cosine similarity of its image and text embeddings)
and keep the share `keep` with the highest scores; the learner then trains uniformly on what is
kept. One rule serves both `jestkit score --keep` (a DataComp subset of your shards) and the
payoff benchmark's filter baseline on Fashion-MNIST.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(N,) cosine similarity of each row's image and text embeddings (N, d)."""
    if image.shape != text.shape or image.dim() != 2:
        raise ValueError(
            f"image and text embeddings must both be (N, d), got {tuple(image.shape)} and "
            f"{tuple(text.shape)}"
        )
    return F.cosine_similarity(image.float(), text.float(), dim=-1)


def keep_top(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """Positions of the max(1, round(keep * N)) highest scores, highest first; ties keep the
    earlier position (a stable sort), so the result depends only on the scores' order."""
    if not isinstance(keep, int | float) or not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    if scores.dim() != 1 or len(scores) == 0:
        raise ValueError(f"scores must be a non-empty 1-D tensor, got {tuple(scores.shape)}")
    n = max(1, round(keep * len(scores)))
    return torch.argsort(scores, descending=True, stable=True)[:n]
