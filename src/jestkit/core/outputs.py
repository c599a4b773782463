"""What a model contributes to a selection: per-example losses or contrastive embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Embeddings:
    """A dual encoder's outputs on a super-batch of B image-text pairs.

    image, text: (B, d) embeddings (normalised or not: the gains use them as given).
    logit_scale: the model's temperature t, multiplying the dot products.
    logit_bias: SigLIP's bias beta (ignored by the softmax loss, where it cancels).
    """

    image: torch.Tensor
    text: torch.Tensor
    logit_scale: float | torch.Tensor = 10.0
    logit_bias: float | torch.Tensor = -10.0

    def __len__(self) -> int:
        return self.image.shape[0]


Outputs = torch.Tensor | Embeddings
"""A model's outputs: a (B,) vector of per-example losses, or Embeddings."""
