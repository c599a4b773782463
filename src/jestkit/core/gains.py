"""Exact marginal gains of the batch score, kept in O(chunk * B + B * d) memory.

The batch score of a set S is a weighted sum of the models' batch losses,
s(S) = sum_m w_m * loss_m(S): learnability is (learner, +1), (reference, -1). The joint
sampler needs, for every candidate k, the gain g(k | C) = s(C + k) - s(C) from adding k to the
selected set C. Each class here is a *gain state*: it holds the candidates' outputs, exposes
`first_scores()` (the scores of the first chunk), `gains()` (g(k | C) for the current C) and
`add(idx)` (grow C by a chunk). No class ever allocates a B x B matrix: pair terms are computed
for one block of rows at a time, from the embeddings.

Losses (docs/design.md, "The gains"), each summed over the batch, no normalisation:
* per-example: loss(S) = sum_{i in S} l_i, so g(k | C) = l_k.
* sigmoid (SigLIP): loss(S) = sum_{i, j in S} softplus(-z_ij * (t <u_i, v_j> + beta)),
  z_ii = +1, z_ij = -1; g(k | C) = A_kk + sum_{j in C} (A_kj + A_jk).
* softmax (CLIP, both directions): with s_ij = t <u_i, v_j>,
  loss(S) = sum_{i in S} [-2 s_ii + LSE_{j in S} s_ij + LSE_{j in S} s_ji], and
  g(k | C) = -2 s_kk + LSE_{j in C+k} s_kj + LSE_{j in C+k} s_jk
             + sum_{j in C} softplus(s_jk - R_j) + sum_{j in C} softplus(s_kj - K_j),
  R_j, K_j the running row and column log-partitions of the selected j over C. g(k | {}) = 0, so
  the first chunk is scored by each example's own loss against the whole super-batch.

Sharding (jestkit.dropin.distributed): a state may hold only a shard of the super-batch, the
candidates at global positions offset .. offset + size - 1. The same methods then serve many
processes: `shared(idx)` packs what a chunk's members contribute to the others' gains into one
(c, D) tensor, `absorb(shared, chunk)` adds a chunk given those rows (gathered from every shard)
and the chunk's global positions, and the whole-super-batch pass of the independent scores is
split into `super_batch_terms` (this shard's rows against every column), `merge_columns`
(combine the shards' column partials) and `scores_from_terms`. One process is the shard with
offset 0 that holds everything: `add(idx)` is `absorb(shared(idx), idx)`.

Speed (benchmarks/selection.py): the c x B pair terms cost as much as the GEMMs that make them
unless they are cheap. Sums over rows of softplus, the bulk of both losses' work, go through
`_softplus_row_sums`: a shift (the sigmoid bias, the softmax log-partition) is folded into the
GEMM as an extra column, the logits are made one cache-sized block at a time, and
sum_j softplus(x_j) = -log prod_j sigmoid(-x_j) takes one sigmoid per pair and one log per 16.
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

    def with_ones(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, text) with a column of ones, the right side of _softplus_row_sums' GEMMs."""
        return _with_ones(self.image), _with_ones(self.text)

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


def _with_ones(e: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, d + 1) with a last column of ones: a GEMM against it adds a per-row shift."""
    return torch.cat([e, e.new_ones(e.shape[0], 1)], 1)


GROUP = 16  # factors per product in _softplus_row_sums: one log per GROUP pairs
BLOCK_ELEMENTS = 1 << 18  # pair terms per block of _softplus_row_sums (1 MiB in fp32: cache-sized)


def _log_products(s: torch.Tensor) -> torch.Tensor:
    """Multiply the rows of s (r, w) together in place, GROUP at most into each product; the
    products, ceil(r / GROUP) rows or fewer, a view of s."""
    r, factors = s.shape[0], 1
    while r > 1 and factors < GROUP:
        h = (r + 1) // 2
        s[: r - h].mul_(s[h:r])
        r, factors = h, 2 * factors
    return s[:r]


def _softplus_row_sums(
    rows: torch.Tensor,
    shifts: torch.Tensor,
    cols: torch.Tensor,
    out: torch.Tensor,
    weight: float,
    work: torch.Tensor,
) -> None:
    """out[k] += weight * sum_j softplus(<rows_j, cols_k[:-1]> + shifts_j) for every k.

    cols: (n, d + 1), the embeddings with a last column of ones (_with_ones), so that one GEMM
    against [-rows, -shifts] makes z = -x. work: a preallocated 1-D buffer; its length bounds the
    pairs computed at once (at least 64 per row). One block at a time,
    sum_j softplus(x_j) = -sum over products of log prod_j sigmoid(z_j), each product of GROUP
    factors or fewer. A block where a product leaves the normal floating-point range (a sum of
    softplus above ~ 70 in fp32, ~ 700 in fp64 within one product) is summed as logaddexp(x, 0)
    instead (exact; F.softplus returns x for x > 20), so the result is exact to rounding for any
    logits.
    """
    if rows.shape[0] == 0:
        return
    a = torch.cat([-rows, -shifts[:, None]], 1)
    tiny = torch.finfo(a.dtype).tiny * 2**16  # products above it are normal: full precision
    width = min(cols.shape[0], max(64, work.numel() // a.shape[0]))
    n_rows = max(1, min(a.shape[0], work.numel() // width))
    for rblk in _blocks(a.shape[0], n_rows):
        ar = a[rblk]
        for cblk in _blocks(cols.shape[0], width):
            z = work[: ar.shape[0] * (cblk.stop - cblk.start)].view(ar.shape[0], -1)
            torch.mm(ar, cols[cblk].T, out=z)
            prods = _log_products(z.sigmoid_())
            if bool(prods.amin() < tiny):
                torch.mm(ar, cols[cblk].T, out=z)
                out[cblk] += weight * torch.logaddexp(z.neg_(), z.new_zeros(())).sum(0)
            else:
                out[cblk] -= weight * prods.log_().sum(0)


def _log1p_exp_sums(rows: torch.Tensor, cols: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """u_k = log(1 + sum_j exp(<rows_j, cols_k[:-1]> + cols_k[-1])) for every k: how much a
    running log-partition L_k grows when the rows join it, if cols_k[-1] = -L_k
    (LSE(L_k, x_1k, ..., x_ck) = L_k + u_k). One exp per pair, no max pass; a column block whose
    sum overflows is recomputed with logsumexp, so the result is exact to rounding."""
    a = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], 1)
    out = cols.new_empty(cols.shape[0])
    if rows.shape[0] == 0:
        return out.zero_()
    width = min(cols.shape[0], max(64, work.numel() // a.shape[0]))
    n_rows = max(1, min(a.shape[0], work.numel() // width))
    for cblk in _blocks(cols.shape[0], width):
        total = out[cblk].zero_()
        for rblk in _blocks(a.shape[0], n_rows):
            z = work[: (rblk.stop - rblk.start) * (cblk.stop - cblk.start)].view(-1, total.shape[0])
            total += torch.mm(a[rblk], cols[cblk].T, out=z).exp_().sum(0)
        if bool(torch.isfinite(total).all()):
            total.log1p_()
            continue
        lse = torch.full_like(total, float("-inf"))
        for rblk in _blocks(a.shape[0], n_rows):
            z = work[: (rblk.stop - rblk.start) * (cblk.stop - cblk.start)].view(-1, total.shape[0])
            lse = torch.logaddexp(lse, torch.logsumexp(torch.mm(a[rblk], cols[cblk].T, out=z), 0))
        total.copy_(torch.logaddexp(lse, lse.new_zeros(())))
    return out


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
        self.columns = [t.with_ones() for t in self.towers]  # (image, text), each (size, d + 1)
        # _softplus_row_sums' blocks: block_size rows, or BLOCK_ELEMENTS pairs (cache-sized)
        n_work = min(block_size * self.size, max(BLOCK_ELEMENTS, 64 * block_size))
        self.work = self.towers[0].image.new_empty(n_work)

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
        # the positive pairs' logits: softplus(-x) = softplus(x) - x turns their negative-pair
        # terms, which absorb() adds for every pair, into the positive-pair loss
        self.positive_logits = [t.scale * (t.image * t.text).sum(1) + t.bias for t in self.towers]
        pairs = zip(self.towers, self.positive_logits, strict=True)
        self.diag = torch.stack([t.weight * F.softplus(-x) for t, x in pairs]).sum(0)
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
        _, mine = _local_positives(chunk, self.offset, self.size)
        chunks = self._unshare(shared)
        for m, (t, (img_j, txt_j)) in enumerate(zip(self.towers, chunks, strict=True)):
            image, text = self.columns[m]
            bias = img_j.new_full((img_j.shape[0],), t.bias)
            # every pair as a negative: sum_j softplus(x_jk) (pairs (j, k)) and softplus(x_kj)
            _softplus_row_sums(t.scale * img_j, bias, text, self.gain, t.weight, self.work)
            _softplus_row_sums(t.scale * txt_j, bias, image, self.gain, t.weight, self.work)
            # the chunk's own pairs (j, j) are positives, counted twice above: minus x_jj each
            self.gain[mine] -= 2 * t.weight * self.positive_logits[m][mine]


class SoftmaxGains(_PairwiseGains):
    """Exact softmax-contrastive (CLIP) gains with running log-partitions.

    Per model it keeps, for every candidate k, cand_row[k] = LSE_{j in C+k} s_kj and
    cand_col[k] = LSE_{j in C+k} s_jk, and for every selected j its embeddings and partitions
    sel_row[j], sel_col[j] over C. The terms sum_{j in C} softplus(s_jk - R_j) depend on R_j,
    which grows with C, so they are recomputed from the selected embeddings, one block of rows at
    a time. The selected embeddings are kept multiplied by the scale: s_jk = <sel_image_j, v_k>.
    """

    first_is_independent = True  # first_scores() are the scores against the whole super-batch

    def __init__(self, models: Sequence[Weighted], block_size: int = 512, offset: int = 0):
        super().__init__(models, block_size, offset)
        self.diag = [t.scale * (t.image * t.text).sum(1) for t in self.towers]
        self.cand_row = [d.clone() for d in self.diag]
        self.cand_col = [d.clone() for d in self.diag]
        # (image, text) with a last column -cand_row, -cand_col: _log1p_exp_sums' right sides
        self.shifted = [
            (torch.cat([t.image, -r[:, None]], 1), torch.cat([t.text, -c[:, None]], 1))
            for t, r, c in zip(self.towers, self.cand_row, self.cand_col, strict=True)
        ]
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
                logits = (t.scale * t.image[blk]) @ text.T
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
            image, text = self.columns[m]
            # sum_{j in C} softplus(s_jk - R_j) and softplus(s_kj - K_j); sel_* hold scale * e
            _softplus_row_sums(self.sel_image[m], -self.sel_row[m], text, g, 1.0, self.work)
            _softplus_row_sums(self.sel_text[m], -self.sel_col[m], image, g, 1.0, self.work)
            total += t.weight * g
        return total

    def absorb(self, shared: torch.Tensor, chunk: torch.Tensor) -> None:
        """Add a chunk: shared = its members' packed embeddings, chunk = their global positions
        (unused: the softmax loss treats a candidate's own pair like any other in the LSEs)."""
        chunk_embeddings = self._unshare(shared)
        for m, (t, (img_j, txt_j)) in enumerate(zip(self.towers, chunk_embeddings, strict=True)):
            img_s, txt_s = t.scale * img_j, t.scale * txt_j  # scaled, like sel_image, sel_text
            img_c, txt_c = self.sel_image[m], self.sel_text[m]
            s_cj = img_c @ txt_j.T  # (|C|, c)
            s_jc = img_j @ txt_c.T  # (c, |C|)
            s_jj = img_s @ txt_j.T  # (c, c)
            new_row = torch.logsumexp(torch.cat([s_jc, s_jj], 1), 1)
            new_col = torch.logsumexp(torch.cat([s_cj, s_jj], 0), 0)
            old_row = torch.logaddexp(self.sel_row[m], torch.logsumexp(s_cj, 1))
            old_col = torch.logaddexp(self.sel_col[m], torch.logsumexp(s_jc, 0))
            self.sel_row[m] = torch.cat([old_row, new_row])
            self.sel_col[m] = torch.cat([old_col, new_col])
            self.sel_image[m] = torch.cat([img_c, img_s])
            self.sel_text[m] = torch.cat([txt_c, txt_s])
            # candidates: extend their partitions by the chunk (s_kj, s_jk for j in the chunk)
            image, text = self.shifted[m]
            self.cand_row[m] += _log1p_exp_sums(txt_s, image, self.work)
            self.cand_col[m] += _log1p_exp_sums(img_s, text, self.work)
            image[:, -1] = -self.cand_row[m]
            text[:, -1] = -self.cand_col[m]
        self.n_selected += len(chunk)
