"""Training losses: SigLIP's sigmoid loss, CLIP's softmax loss, per-example cross-entropy.

These are the *training* objectives, normalised the way the papers train (the selection gains
in jestkit.core use the same pair losses summed without normalisation; a constant factor does
not change which sub-batch is selected).

img, txt: (n, d) embeddings of n matched pairs (row i of each is a positive pair), usually
L2-normalised; logit_scale t and logit_bias b are scalars (tensors when learned).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    logit_scale: float | torch.Tensor,
    logit_bias: float | torch.Tensor,
) -> torch.Tensor:
    """SigLIP (Zhai et al. 2023): sum_{i,j} softplus(-z_ij (t <u_i, v_j> + b)) / n.

    z_ii = +1 (matched pair), z_ij = -1 otherwise; n = batch size.
    """
    logits = logit_scale * img @ txt.T + logit_bias
    z = 2 * torch.eye(len(img), dtype=logits.dtype, device=logits.device) - 1
    return F.softplus(-z * logits).sum() / len(img)


def softmax_loss(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: float | torch.Tensor
) -> torch.Tensor:
    """CLIP / InfoNCE: mean of the image->text and text->image cross-entropies."""
    logits = logit_scale * img @ txt.T
    labels = torch.arange(len(img), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def per_example_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(n, classes) logits, (n,) labels -> (n,) losses: the per-example outputs for selection."""
    return F.cross_entropy(logits, labels, reduction="none")


CONTRASTIVE_LOSSES = ("sigmoid", "softmax")


def contrastive_loss(
    name: str,
    img: torch.Tensor,
    txt: torch.Tensor,
    logit_scale: float | torch.Tensor,
    logit_bias: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """sigmoid_loss or softmax_loss by name (the bias is ignored by softmax)."""
    if name == "sigmoid":
        return sigmoid_loss(img, txt, logit_scale, logit_bias)
    if name == "softmax":
        return softmax_loss(img, txt, logit_scale)
    raise ValueError(f"unknown loss {name!r}; choose one of {CONTRASTIVE_LOSSES}")
