"""The paper's listing with full B x B matrices: the oracle for tests and the benchmark's baseline,
and the random embeddings both feed it.

Not for training: at B = 16,384 every matrix here is 1 GiB. These states plug into the same
`joint_sample` loop as jestkit.core.gains, so with the same generator both draw the same noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from jestkit.core.gains import Weighted, _Tower
from jestkit.core.outputs import Embeddings


def sigmoid_loss_matrix(t: _Tower) -> torch.Tensor:
    """l_ij = softplus(-z_ij (scale <u_i, v_j> + bias)), z_ii = 1, z_ij = -1."""
    logits = t.scale * (t.image @ t.text.T) + t.bias
    z = 2 * torch.eye(len(logits), dtype=logits.dtype, device=logits.device) - 1
    return F.softplus(-z * logits)


def softmax_logit_matrix(t: _Tower) -> torch.Tensor:
    return t.scale * (t.image @ t.text.T)


class NaiveSigmoidGains:
    """A = sum_m w_m * L_m held in full; gains as the paper's listing computes them."""

    def __init__(self, models: Sequence[Weighted]):
        towers = [_Tower.of(m) for m in models]
        self.scores = sum(t.weight * sigmoid_loss_matrix(t) for t in towers)
        self.size = len(self.scores)
        self.diag = torch.diagonal(self.scores).clone()
        self.taken = torch.zeros(self.size, dtype=torch.bool, device=self.scores.device)

    def independent_scores(self) -> torch.Tensor:
        return self.scores.sum(1) + self.scores.sum(0) - self.diag

    def first_scores(self) -> torch.Tensor:
        return self.diag

    def gains(self) -> torch.Tensor:
        mask = self.taken.to(self.scores.dtype)
        logits_ij = (self.scores * mask[None, :]).sum(1)
        logits_ji = (self.scores * mask[:, None]).sum(0)
        return self.diag + logits_ij + logits_ji

    def add(self, idx: torch.Tensor) -> None:
        self.taken[idx] = True


class NaiveSoftmaxGains:
    """Full logit matrices per model; exact gains from masked log-sum-exps over them."""

    def __init__(self, models: Sequence[Weighted]):
        towers = [_Tower.of(m) for m in models]
        self.weights = [t.weight for t in towers]
        self.logits = [softmax_logit_matrix(t) for t in towers]
        self.size = len(self.logits[0])
        self.taken = torch.zeros(self.size, dtype=torch.bool, device=self.logits[0].device)

    def independent_scores(self) -> torch.Tensor:
        total = 0
        for w, s in zip(self.weights, self.logits, strict=True):
            total = total + w * (s.logsumexp(1) + s.logsumexp(0) - 2 * torch.diagonal(s))
        return total

    def first_scores(self) -> torch.Tensor:
        return self.independent_scores()

    def gains(self) -> torch.Tensor:
        c = self.taken
        total = 0
        for w, s in zip(self.weights, self.logits, strict=True):
            diag = torch.diagonal(s)
            cand_row = torch.logaddexp(s.masked_fill(~c[None, :], -torch.inf).logsumexp(1), diag)
            cand_col = torch.logaddexp(s.masked_fill(~c[:, None], -torch.inf).logsumexp(0), diag)
            sel_row = s.masked_fill(~c[None, :], -torch.inf).logsumexp(1)  # R_j for j in C
            sel_col = s.masked_fill(~c[:, None], -torch.inf).logsumexp(0)  # K_j for j in C
            into_rows = F.softplus(s - sel_row[:, None]).masked_fill(~c[:, None], 0).sum(0)
            into_cols = F.softplus(s - sel_col[None, :]).masked_fill(~c[None, :], 0).sum(1)
            total = total + w * (cand_row + cand_col - 2 * diag + into_rows + into_cols)
        return total

    def add(self, idx: torch.Tensor) -> None:
        self.taken[idx] = True


def random_embeddings(
    n: int,
    d: int,
    generator: torch.Generator,
    scale: float = 10.0,
    bias: float = -10.0,
    noise: float = 0.7,
    dtype: torch.dtype = torch.float32,
) -> Embeddings:
    """Random unit image embeddings and text embeddings near them (image + noise * N(0, 1),
    normalised): the inputs of the tests and benchmarks, drawn from `generator`."""
    img = F.normalize(torch.randn(n, d, generator=generator, dtype=dtype), dim=1)
    txt = F.normalize(img + noise * torch.randn(n, d, generator=generator, dtype=dtype), dim=1)
    return Embeddings(img, txt, scale, bias)
