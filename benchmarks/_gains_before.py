"""The joint sampler's gain states as they were before issue 26 (commit 34e0e56), kept only so
that benchmarks/selection_cpu.py can time the old code beside the new in the same run. Not part of
jestkit; do not import it elsewhere."""

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


def _pack(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate (n, d_i) tensors along dim 1 in their common dtype (casts up, so exact)."""
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    return torch.cat([p.to(dtype) for p in parts], 1)


def _unpack(packed: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a _pack-ed tensor back into contiguous parts with the widths and dtypes of `like`."""
    widths = [t.shape[1] for t in like]
    parts = torch.split(packed, widths, dim=1)
    return [p.to(t.dtype).contiguous() for p, t in zip(parts, like, strict=True)]


def _blocks(n: int, block: int):
    for start in range(0, n, block):
        yield slice(start, min(start + block, n))


def _positives(n_rows: int, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) coordinates of the positive pairs of a block whose row r is candidate cols[r]."""
    return torch.arange(n_rows, device=cols.device), cols


def _local_positives(chunk: torch.Tensor, offset: int, size: int):
    """(row, col) of the positive pairs between a chunk (global positions) and a shard's columns:
    chunk member r at global position g is column g - offset when the shard holds g."""
    mine = (chunk >= offset) & (chunk < offset + size)
    return torch.nonzero(mine).flatten(), chunk[mine] - offset


class PerExampleGains:
    """Per-example losses: the gain of k is its own weighted loss, whatever C is."""

    pairwise = False  # no pair terms: shards never exchange outputs
    first_is_independent = False  # first_scores() needs no other shard

    def __init__(self, models: Sequence[Weighted], offset: int = 0):
        vecs = [m.weight * m.outputs.to(compute_dtype(m.outputs)) for m in models]
        self.score = torch.stack(vecs).sum(0)
        self.size = self.score.shape[0]
        self.offset = offset

    def independent_scores(self) -> torch.Tensor:
        return self.score

    def first_scores(self) -> torch.Tensor:
        return self.score

    def gains(self) -> torch.Tensor:
        return self.score

    def shared(self, idx: torch.Tensor) -> torch.Tensor:
        return self.score.new_empty(len(idx), 0)

    def absorb(self, shared: torch.Tensor, chunk: torch.Tensor) -> None:
        pass

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


class _PairwiseGains:
    """What the two contrastive states share: towers, a shard of the super-batch, packing."""

    pairwise = True  # pair terms: shards exchange the chunk's embeddings

    def __init__(self, models: Sequence[Weighted], block_size: int, offset: int):
        self.towers = [_Tower.of(m) for m in models]
        self.size = self.towers[0].image.shape[0]
        self.block_size = block_size
        self.offset = offset

    def shared(self, idx: torch.Tensor) -> torch.Tensor:
        """(len(idx), D): the image and text embeddings of candidates idx, every tower, packed."""
        return _pack([e[idx] for t in self.towers for e in (t.image, t.text)])

    def _unshare(self, shared: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        parts = _unpack(shared, [e for t in self.towers for e in (t.image, t.text)])
        return list(zip(parts[0::2], parts[1::2], strict=True))

    def column_outputs(self) -> torch.Tensor:
        """(size, D'): what the whole-super-batch pass needs of this shard (the text embeddings)."""
        return _pack([t.text for t in self.towers])

    def _columns(self, columns: torch.Tensor) -> list[torch.Tensor]:
        return _unpack(columns, [t.text for t in self.towers])

    def independent_scores(self) -> torch.Tensor:
        """Each example's weighted loss in the context of the whole super-batch (one shard:
        everything; under jestkit.dropin.distributed the column partials are merged across
        shards)."""
        return self.scores_from_terms(*self.super_batch_terms(self.column_outputs()))

    def add(self, idx: torch.Tensor) -> None:
        self.absorb(self.shared(idx), idx + self.offset)


class SigmoidGains(_PairwiseGains):
    """Sigmoid-contrastive gains: a running length-B vector, 2 GEMMs per model per chunk."""

    first_is_independent = False  # first_scores() are the diagonal terms, local to a shard

    def __init__(self, models: Sequence[Weighted], block_size: int = 512, offset: int = 0):
        super().__init__(models, block_size, offset)
        diag = [
            t.weight * F.softplus(-(t.scale * (t.image * t.text).sum(1) + t.bias))
            for t in self.towers
        ]
        self.diag = torch.stack(diag).sum(0)
        self.gain = self.diag.clone()

    def super_batch_terms(self, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This shard's rows against all B columns (the text embeddings of the whole super-batch):
        rows (1, size) = sum_j A_kj for its candidates k, complete; cols (1, B) = sum over its
        rows j of A_jk for every candidate k, a partial sum over shards."""
        texts = self._columns(columns)
        rowsum = torch.zeros_like(self.diag)
        colsum = self.diag.new_zeros(texts[0].shape[0])
        for t, text in zip(self.towers, texts, strict=True):
            for blk in _blocks(self.size, self.block_size):
                idx = torch.arange(blk.start, blk.stop, device=self.diag.device) + self.offset
                loss = _sigmoid_block(t, t.image[blk], text, _positives(len(idx), idx))
                rowsum[blk] += t.weight * loss.sum(1)
                colsum += t.weight * loss.sum(0)
        return rowsum[None], colsum[None]

    @staticmethod
    def merge_columns(parts: torch.Tensor) -> torch.Tensor:
        """(n_shards, 1, n) column partials -> (1, n): sums over every row of the super-batch."""
        return parts.sum(0)

    def scores_from_terms(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """A_kk + sum_{j != k} (A_kj + A_jk) = g(k | all others)."""
        return rows[0] + cols[0] - self.diag

    def first_scores(self) -> torch.Tensor:
        return self.diag

    def gains(self) -> torch.Tensor:
        return self.gain

    def absorb(self, shared: torch.Tensor, chunk: torch.Tensor) -> None:
        """Add a chunk: shared = its members' packed embeddings, chunk = their global positions."""
        pos = _local_positives(chunk, self.offset, self.size)
        for t, (img_j, txt_j) in zip(self.towers, self._unshare(shared), strict=True):
            rows = _sigmoid_block(t, img_j, t.text, pos)  # (c, B): pairs (j, k)
            cols = _sigmoid_block(t, txt_j, t.image, pos)  # (c, B): pairs (k, j), transposed
            self.gain += t.weight * (rows.sum(0) + cols.sum(0))


class SoftmaxGains(_PairwiseGains):
    """Exact softmax-contrastive (CLIP) gains with running log-partitions.

    Per model it keeps, for every candidate k, cand_row[k] = LSE_{j in C+k} s_kj and
    cand_col[k] = LSE_{j in C+k} s_jk, and for every selected j its embeddings and partitions
    sel_row[j], sel_col[j] over C. The terms sum_{j in C} softplus(s_jk - R_j) depend on R_j,
    which grows with C, so they are recomputed from the selected embeddings, one block of rows at
    a time.
    """

    first_is_independent = True  # first_scores() are the scores against the whole super-batch

    def __init__(self, models: Sequence[Weighted], block_size: int = 512, offset: int = 0):
        super().__init__(models, block_size, offset)
        self.diag = [t.scale * (t.image * t.text).sum(1) for t in self.towers]
        self.cand_row = [d.clone() for d in self.diag]
        self.cand_col = [d.clone() for d in self.diag]
        self.n_selected = 0
        self.sel_image = [t.image[:0] for t in self.towers]
        self.sel_text = [t.text[:0] for t in self.towers]
        self.sel_row = [d.new_empty(0) for d in self.diag]
        self.sel_col = [d.new_empty(0) for d in self.diag]

    def super_batch_terms(self, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This shard's rows against all B columns (the text embeddings of the whole super-batch),
        per model: rows (n_models, size) = LSE_j s_kj for its candidates k, complete; cols
        (n_models, B) = LSE over its rows j of s_jk for every candidate k, a partial over shards."""
        rows, cols = [], []
        for t, text in zip(self.towers, self._columns(columns), strict=True):
            row = torch.empty_like(self.diag[0])
            col = text.new_full((text.shape[0],), float("-inf"))
            for blk in _blocks(self.size, self.block_size):
                logits = t.scale * (t.image[blk] @ text.T)
                row[blk] = torch.logsumexp(logits, 1)
                col = torch.logaddexp(col, torch.logsumexp(logits, 0))
            rows.append(row)
            cols.append(col)
        return torch.stack(rows), torch.stack(cols)

    @staticmethod
    def merge_columns(parts: torch.Tensor) -> torch.Tensor:
        """(n_shards, n_models, n) column partials -> (n_models, n): LSE over every row."""
        return torch.logsumexp(parts, 0)

    def scores_from_terms(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Each example's weighted two-direction loss against the whole super-batch."""
        total = torch.zeros_like(self.diag[0])
        for m, t in enumerate(self.towers):
            total += t.weight * (rows[m] + cols[m] - 2 * self.diag[m])
        return total

    def first_scores(self) -> torch.Tensor:
        return self.independent_scores()

    def gains(self) -> torch.Tensor:
        total = torch.zeros_like(self.diag[0])
        for m, t in enumerate(self.towers):
            g = self.cand_row[m] + self.cand_col[m] - 2 * self.diag[m]
            for blk in _blocks(self.n_selected, self.block_size):
                s_jk = t.scale * (self.sel_image[m][blk] @ t.text.T)  # (blk, B)
                g += F.softplus(s_jk - self.sel_row[m][blk, None]).sum(0)
                s_kj = t.scale * (self.sel_text[m][blk] @ t.image.T)  # (blk, B), transposed
                g += F.softplus(s_kj - self.sel_col[m][blk, None]).sum(0)
            total += t.weight * g
        return total

    def absorb(self, shared: torch.Tensor, chunk: torch.Tensor) -> None:
        """Add a chunk: shared = its members' packed embeddings, chunk = their global positions
        (unused: the softmax loss treats a candidate's own pair like any other in the LSEs)."""
        chunk_embeddings = self._unshare(shared)
        for m, (t, (img_j, txt_j)) in enumerate(zip(self.towers, chunk_embeddings, strict=True)):
            img_c, txt_c = self.sel_image[m], self.sel_text[m]
            s_cj = t.scale * (img_c @ txt_j.T)  # (|C|, c)
            s_jc = t.scale * (img_j @ txt_c.T)  # (c, |C|)
            s_jj = t.scale * (img_j @ txt_j.T)  # (c, c)
            new_row = torch.logsumexp(torch.cat([s_jc, s_jj], 1), 1)
            new_col = torch.logsumexp(torch.cat([s_cj, s_jj], 0), 0)
            old_row = torch.logaddexp(self.sel_row[m], torch.logsumexp(s_cj, 1))
            old_col = torch.logaddexp(self.sel_col[m], torch.logsumexp(s_jc, 0))
            self.sel_row[m] = torch.cat([old_row, new_row])
            self.sel_col[m] = torch.cat([old_col, new_col])
            self.sel_image[m] = torch.cat([img_c, img_j])
            self.sel_text[m] = torch.cat([txt_c, txt_j])
            # candidates: extend their partitions by the chunk
            s_kj = t.scale * (txt_j @ t.image.T)  # (c, B): s_kj for j in the chunk
            s_jk = t.scale * (img_j @ t.text.T)  # (c, B): s_jk for j in the chunk
            self.cand_row[m] = torch.logaddexp(self.cand_row[m], torch.logsumexp(s_kj, 0))
            self.cand_col[m] = torch.logaddexp(self.cand_col[m], torch.logsumexp(s_jk, 0))
        self.n_selected += len(chunk)
