"""Exact marginal gains of the batch score, kept in O(chunk * B + B * d) memory.

The batch score of a set S is a weighted sum of the models' batch losses,
s(S) = sum_m w_m * loss_m(S): learnability is (learner, +1), (reference, -1). The joint
sampler needs, for every candidate k, the gain g(k | C) = s(C + k) - s(C) from adding k to the
selected set C. Each class here is a *gain state*: it holds the candidates' outputs, exposes
`first_scores()` (the scores of the first chunk), `gains()` (g(k | C) for the current C) and
`add(idx)` (grow C by a chunk). No class ever allocates a B x B matrix: pair terms are computed
for one block of rows at a time, from the embeddings.

Losses (DESIGN.md section 1.1), each summed over the batch, no normalisation:
* per-example: loss(S) = sum_{i in S} l_i, so g(k | C) = l_k.
* sigmoid (SigLIP): loss(S) = sum_{i, j in S} softplus(-z_ij * (t <u_i, v_j> + beta)),
  z_ii = +1, z_ij = -1; g(k | C) = A_kk + sum_{j in C} (A_kj + A_jk).
* softmax (CLIP, both directions): with s_ij = t <u_i, v_j>,
  loss(S) = sum_{i in S} [-2 s_ii + LSE_{j in S} s_ij + LSE_{j in S} s_ji], and
  g(k | C) = -2 s_kk + LSE_{j in C+k} s_kj + LSE_{j in C+k} s_jk
             + sum_{j in C} softplus(s_jk - R_j) + sum_{j in C} softplus(s_kj - K_j),
  R_j, K_j the running row and column log-partitions of the selected j over C. g(k | {}) = 0, so
  the first chunk is scored by each example's own loss against the whole super-batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jestkit.core.outputs import Embeddings
from jestkit.core.validate import as_scalar, compute_dtype


@dataclass
class Weighted:
    """One model's outputs in the batch score, with its weight (+1 learner, -1 reference)."""

    outputs: torch.Tensor | Embeddings
    weight: float


@dataclass
class _Tower:
    """A model's embeddings cast to the compute dtype, with its scalars."""

    image: torch.Tensor
    text: torch.Tensor
    scale: float
    bias: float
    weight: float

    @classmethod
    def of(cls, w: Weighted) -> _Tower:
        e = w.outputs
        dtype = compute_dtype(e.image)
        return cls(
            e.image.to(dtype),
            e.text.to(dtype),
            as_scalar("logit_scale", e.logit_scale),
            as_scalar("logit_bias", e.logit_bias),
            w.weight,
        )


def _blocks(n: int, block: int):
    for start in range(0, n, block):
        yield slice(start, min(start + block, n))


def _positives(n_rows: int, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) coordinates of the positive pairs of a block whose row r is candidate cols[r]."""
    return torch.arange(n_rows, device=cols.device), cols


class PerExampleGains:
    """Per-example losses: the gain of k is its own weighted loss, whatever C is."""

    def __init__(self, models: Sequence[Weighted]):
        vecs = [m.weight * m.outputs.to(compute_dtype(m.outputs)) for m in models]
        self.score = torch.stack(vecs).sum(0)
        self.size = self.score.shape[0]

    def independent_scores(self) -> torch.Tensor:
        return self.score

    def first_scores(self) -> torch.Tensor:
        return self.score

    def gains(self) -> torch.Tensor:
        return self.score

    def add(self, idx: torch.Tensor) -> None:
        pass


def _sigmoid_block(t: _Tower, rows: torch.Tensor, cols_emb: torch.Tensor, positive):
    """Pair losses softplus(-z * (scale * <rows, cols> + bias)) of one block."""
    logits = t.scale * (rows @ cols_emb.T) + t.bias
    loss = F.softplus(logits)
    if positive is not None:
        r, c = positive
        loss[r, c] = loss[r, c] - logits[r, c]  # softplus(-x) = softplus(x) - x
    return loss


class SigmoidGains:
    """Sigmoid-contrastive gains: a running length-B vector, 2 GEMMs per model per chunk."""

    def __init__(self, models: Sequence[Weighted], block_size: int = 512):
        self.towers = [_Tower.of(m) for m in models]
        self.size = self.towers[0].image.shape[0]
        self.block_size = block_size
        diag = [
            t.weight * F.softplus(-(t.scale * (t.image * t.text).sum(1) + t.bias))
            for t in self.towers
        ]
        self.diag = torch.stack(diag).sum(0)
        self.gain = self.diag.clone()

    def independent_scores(self) -> torch.Tensor:
        """Each example's weighted loss in the context of the whole super-batch:
        A_kk + sum_{j != k} (A_kj + A_jk) = g(k | all others)."""
        rowsum = torch.zeros_like(self.diag)
        colsum = torch.zeros_like(self.diag)
        for t in self.towers:
            for blk in _blocks(self.size, self.block_size):
                idx = torch.arange(blk.start, blk.stop, device=self.diag.device)
                loss = _sigmoid_block(t, t.image[blk], t.text, _positives(len(idx), idx))
                rowsum[blk] += t.weight * loss.sum(1)
                colsum += t.weight * loss.sum(0)
        return rowsum + colsum - self.diag

    def first_scores(self) -> torch.Tensor:
        return self.diag

    def gains(self) -> torch.Tensor:
        return self.gain

    def add(self, idx: torch.Tensor) -> None:
        pos = _positives(len(idx), idx)
        for t in self.towers:
            rows = _sigmoid_block(t, t.image[idx], t.text, pos)  # (c, B): pairs (j, k)
            cols = _sigmoid_block(t, t.text[idx], t.image, pos)  # (c, B): pairs (k, j), transposed
            self.gain += t.weight * (rows.sum(0) + cols.sum(0))


class SoftmaxGains:
    """Exact softmax-contrastive (CLIP) gains with running log-partitions.

    Per model it keeps, for every candidate k, cand_row[k] = LSE_{j in C+k} s_kj and
    cand_col[k] = LSE_{j in C+k} s_jk, and for every selected j its partitions sel_row[j],
    sel_col[j] over C. The terms sum_{j in C} softplus(s_jk - R_j) depend on R_j, which grows
    with C, so they are recomputed from the selected embeddings, one block of rows at a time.
    """

    def __init__(self, models: Sequence[Weighted], block_size: int = 512):
        self.towers = [_Tower.of(m) for m in models]
        self.size = self.towers[0].image.shape[0]
        self.block_size = block_size
        self.diag = [t.scale * (t.image * t.text).sum(1) for t in self.towers]
        self.cand_row = [d.clone() for d in self.diag]
        self.cand_col = [d.clone() for d in self.diag]
        self.selected = torch.empty(0, dtype=torch.long, device=self.diag[0].device)
        self.sel_row = [d.new_empty(0) for d in self.diag]
        self.sel_col = [d.new_empty(0) for d in self.diag]

    def independent_scores(self) -> torch.Tensor:
        """Each example's weighted two-direction loss against the whole super-batch."""
        total = torch.zeros_like(self.diag[0])
        for t, diag in zip(self.towers, self.diag, strict=True):
            row = torch.empty_like(diag)
            col = torch.full_like(diag, float("-inf"))
            for blk in _blocks(self.size, self.block_size):
                logits = t.scale * (t.image[blk] @ t.text.T)
                row[blk] = torch.logsumexp(logits, 1)
                col = torch.logaddexp(col, torch.logsumexp(logits, 0))
            total += t.weight * (row + col - 2 * diag)
        return total

    def first_scores(self) -> torch.Tensor:
        return self.independent_scores()

    def gains(self) -> torch.Tensor:
        total = torch.zeros_like(self.diag[0])
        for m, t in enumerate(self.towers):
            g = self.cand_row[m] + self.cand_col[m] - 2 * self.diag[m]
            for blk in _blocks(len(self.selected), self.block_size):
                sel = self.selected[blk]
                s_jk = t.scale * (t.image[sel] @ t.text.T)  # (blk, B)
                g += F.softplus(s_jk - self.sel_row[m][blk, None]).sum(0)
                s_kj = t.scale * (t.text[sel] @ t.image.T)  # (blk, B), transposed
                g += F.softplus(s_kj - self.sel_col[m][blk, None]).sum(0)
            total += t.weight * g
        return total

    def add(self, idx: torch.Tensor) -> None:
        old = self.selected
        for m, t in enumerate(self.towers):
            img_j, txt_j = t.image[idx], t.text[idx]
            s_cj = t.scale * (t.image[old] @ txt_j.T)  # (|C|, c)
            s_jc = t.scale * (img_j @ t.text[old].T)  # (c, |C|)
            s_jj = t.scale * (img_j @ txt_j.T)  # (c, c)
            new_row = torch.logsumexp(torch.cat([s_jc, s_jj], 1), 1)
            new_col = torch.logsumexp(torch.cat([s_cj, s_jj], 0), 0)
            old_row = torch.logaddexp(self.sel_row[m], torch.logsumexp(s_cj, 1))
            old_col = torch.logaddexp(self.sel_col[m], torch.logsumexp(s_jc, 0))
            self.sel_row[m] = torch.cat([old_row, new_row])
            self.sel_col[m] = torch.cat([old_col, new_col])
            # candidates: extend their partitions by the chunk, one block of columns at a time
            s_kj = t.scale * (txt_j @ t.image.T)  # (c, B): s_kj for j in the chunk
            s_jk = t.scale * (img_j @ t.text.T)  # (c, B): s_jk for j in the chunk
            self.cand_row[m] = torch.logaddexp(self.cand_row[m], torch.logsumexp(s_kj, 0))
            self.cand_col[m] = torch.logaddexp(self.cand_col[m], torch.logsumexp(s_jk, 0))
        self.selected = torch.cat([old, idx])


def gain_state(loss: str, models: Sequence[Weighted], block_size: int = 512):
    """The gain state for `loss` ('per_example', 'sigmoid' or 'softmax')."""
    if loss == "per_example":
        return PerExampleGains(models)
    if loss == "sigmoid":
        return SigmoidGains(models, block_size)
    if loss == "softmax":
        return SoftmaxGains(models, block_size)
    raise ValueError(f"loss must be 'per_example', 'sigmoid' or 'softmax', got {loss!r}")
