"""The losses, one table: each name gives its gain state, its naive oracle and its training loss.

| name        | gain state (the joint sampler's) | naive oracle       | training loss             |
| per_example | PerExampleGains                  | PerExampleGains    | per_example_cross_entropy |
| sigmoid     | SigmoidGains                     | NaiveSigmoidGains  | sigmoid_loss (SigLIP)     |
| softmax     | SoftmaxGains                     | NaiveSoftmaxGains  | softmax_loss (CLIP)       |

The gain states compute the *batch* loss of a set, summed without normalisation (see
docs/design.md, "The gains"); the training losses are normalised the way the papers train. A
constant factor does not change which sub-batch is selected.

img, txt: (n, d) embeddings of n matched pairs (row i of each is a positive pair), usually
L2-normalised; logit_scale t and logit_bias b are scalars (tensors when learned).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jestkit.core.gains import PerExampleGains, SigmoidGains, SoftmaxGains, Weighted
from jestkit.core.naive import NaiveSigmoidGains, NaiveSoftmaxGains


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
    img: torch.Tensor,
    txt: torch.Tensor,
    logit_scale: float | torch.Tensor,
    logit_bias: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """CLIP / InfoNCE: mean of the image->text and text->image cross-entropies (a bias would
    cancel in both softmaxes: logit_bias is accepted and ignored)."""
    logits = logit_scale * img @ txt.T
    labels = torch.arange(len(img), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def per_example_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(n, classes) logits, (n,) labels -> (n,) losses: the per-example outputs for selection."""
    return F.cross_entropy(logits, labels, reduction="none")


@dataclass(frozen=True)
class Loss:
    """One row of the loss table."""

    name: str
    gains: Callable[..., object]  # (models, block_size, offset) -> gain state
    naive: Callable[..., object]  # (models) -> the B x B oracle's gain state
    training: Callable[..., torch.Tensor]  # the training objective

    @property
    def contrastive(self) -> bool:
        """Whether the models' outputs are image-text embeddings (else per-example losses)."""
        return self.name != "per_example"


def _per_example(models, block_size=512, offset=0):
    return PerExampleGains(models, offset)


LOSS_TABLE = {
    loss.name: loss
    for loss in (
        Loss("per_example", _per_example, PerExampleGains, per_example_cross_entropy),
        Loss("sigmoid", SigmoidGains, NaiveSigmoidGains, sigmoid_loss),
        Loss("softmax", SoftmaxGains, NaiveSoftmaxGains, softmax_loss),
    )
}
LOSSES = tuple(LOSS_TABLE)
CONTRASTIVE_LOSSES = tuple(name for name, loss in LOSS_TABLE.items() if loss.contrastive)


def get_loss(name: str) -> Loss:
    """The table's row for `name`; a ValueError naming the choices otherwise."""
    if not isinstance(name, str) or name not in LOSS_TABLE:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    return LOSS_TABLE[name]


def gain_state(
    loss: str,
    models: Sequence[Weighted],
    block_size: int = 512,
    offset: int = 0,
    naive: bool = False,
):
    """The gain state for `loss`. offset: the global position of its first candidate when it
    holds one shard of the super-batch. naive: the full B x B oracle (one process only)."""
    row = get_loss(loss)
    return row.naive(models) if naive else row.gains(models, block_size, offset)


def contrastive_loss(
    name: str,
    img: torch.Tensor,
    txt: torch.Tensor,
    logit_scale: float | torch.Tensor,
    logit_bias: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """The training loss of a contrastive loss by name (the bias is ignored by softmax)."""
    if name not in CONTRASTIVE_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {CONTRASTIVE_LOSSES}")
    return LOSS_TABLE[name].training(img, txt, logit_scale, logit_bias)
