"""Global joint example selection under torch.distributed: the answer one process would give.

Every rank holds one shard of the super-batch, n = B / world_size candidates with its learner
and reference outputs; the super-batch is the shards concatenated in rank order, so rank r holds
global positions r * n .. (r + 1) * n - 1. All ranks run the same blocked sampler (one chunk
loop, jestkit.core.sampler.joint_sample; docs/design.md, "Global selection") on the same seeded
generator and return the same b global positions, in the same order, as `jestkit.select` on the
whole super-batch. Per selection step they exchange only:

* a check: shard sizes and "inputs ok" (2 int64 per rank), so a bad input or a world size that
  does not divide B fails on every rank alike instead of leaving the others waiting;
* per-example losses: the gains never change, so every rank gathers the B weighted scores (one
  float each) once and runs the one-process sampler on them: bit-identical, ties included;
* contrastive losses, per chunk, the Gumbel-top-k merge: each rank's best min(c, n) perturbed
  scores (plus their int64 positions when c < n). Every rank draws the full length-B noise
  vector from its own copy of the generator and uses its slice, so the perturbed scores are
  those one process computes;
* contrastive losses, per chunk: the chosen chunk's embeddings (c rows of the packed image and
  text embeddings of learner and reference), sent by their owners to every rank;
* softmax only, once per step: the first chunk is drawn from each candidate's loss against the
  whole super-batch, whose log-partitions need every cross-shard product s_kj = t <u_k, v_j>.
  Some rank must hold u_k and v_j together, so one side of the embeddings has to travel: every
  rank gathers the *text* embeddings of the super-batch (B x d per model, half of gathering
  everything), computes its rows' partitions (complete) and its rows' share of every column's
  partition, and the column partials travel back to their owners (B floats per model in all).
  The same pass serves method='independent' for both contrastive losses.

No rank ever holds a B x B matrix or the super-batch's image embeddings.

Exactness: per-example selections are bit-identical on every world size. The contrastive
gains come from GEMMs and reductions over shards of different shapes, which BLAS libraries (MKL,
cuBLAS) round differently in the last bit; the selection is then identical unless two perturbed
scores lie within float rounding of each other (float64 outputs make that vanishingly rare),
or two are exactly equal (the merge may then order them differently).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from jestkit.core.gains import PerExampleGains, Weighted
from jestkit.core.losses import gain_state, get_loss
from jestkit.core.outputs import Outputs
from jestkit.core.policies import (
    SelectionConfig,
    Selector,
    checked_selected_size,
    get_policy,
    selection_config,
    uniform_indices,
    weighted_outputs,
)
from jestkit.core.sampler import joint_sample, perturbed_scores, sample_without_replacement
from jestkit.core.validate import (
    check_device,
    check_generator,
    check_int,
    check_pair,
    device_of,
)
from jestkit.dropin.distributed.comm import Exchange, Traffic


def select_global(
    learner: Outputs | None = None,
    reference: Outputs | None = None,
    config: SelectionConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    group: dist.ProcessGroup | None = None,
    batch_size: int | None = None,
    traffic: Traffic | None = None,
    **overrides,
) -> torch.Tensor:
    """Global positions (in selection order) of the b examples of the super-batch to train on,
    the same tensor on every rank of `group`.

    learner, reference: this rank's shard of the outputs ((n,) losses or Embeddings of n rows).
    generator: seeded identically on every rank (same seed, same number of draws so far).
    batch_size: the global B, needed only for the uniform policy when no outputs are given.
    traffic: a Traffic to add this call's bytes to.
    """
    config = selection_config(config, overrides)
    check_generator("generator", generator)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size)
    ex = Exchange(group, traffic)
    W = ex.world_size
    scored = get_policy(config.policy).scored
    if not scored and learner is None and reference is None:
        if batch_size is None:
            raise ValueError("uniform selection needs batch_size (or any model's outputs)")
        size, n, device = batch_size, None, None
    else:
        n, device = _agree_on_shards(learner, reference, config, ex)
        size = n * W
    b = checked_selected_size(config, size, batch_size)
    if not scored:
        return uniform_indices(size, b, generator, device)

    models = weighted_outputs(config, learner, reference)
    state = gain_state(config.loss, models, config.block_size, offset=ex.rank * n)
    if not state.pairwise:  # B floats in all: gather them and select as one process does
        everything = PerExampleGains([Weighted(ex.all_gather(state.score).flatten(), 1.0)])
        if config.method == "independent":
            scores = everything.independent_scores()
            return sample_without_replacement(scores, b, config.temperature, generator)
        return joint_sample(
            everything, b, config.n_chunks, config.temperature, generator, config.normalize_gains
        )
    if config.method == "independent":
        scores = _super_batch_scores(state, ex)
        return _global_top(scores, b, config.temperature, generator, state, ex)
    return _joint_sample(state, b, config, generator, ex)


class GlobalSelector(Selector):
    """Selector across the ranks of a process group: its config and generator (seeded alike on
    every rank: the seed defaults to 0, never to fresh entropy), called with this rank's shard
    of the outputs; the same positions come back on every rank.

    >>> selector = GlobalSelector(SelectionConfig(loss="sigmoid"), seed=0)   # doctest: +SKIP
    >>> positions = selector(learner_shard, reference_shard)   # same on every rank
    """

    def __init__(
        self,
        config: SelectionConfig | None = None,
        *,
        seed: int = 0,
        group: dist.ProcessGroup | None = None,
        device: torch.device | str = "cpu",
        **overrides,
    ):
        self.group, self.traffic = group, Traffic()
        self.device = check_device("device", device)
        super().__init__(config, seed=seed, **overrides)

    def generator_device(self) -> torch.device | str:
        return self.device

    def __call__(
        self, learner: Outputs | None = None, reference: Outputs | None = None, **kwargs
    ) -> torch.Tensor:
        return select_global(
            learner,
            reference,
            self.config,
            generator=self.generator,
            group=self.group,
            traffic=self.traffic,
            **kwargs,
        )


def _agree_on_shards(learner, reference, config, ex: Exchange) -> tuple[int, torch.device | None]:
    """Check this rank's outputs, then agree with every rank that all shards are valid and of
    equal size: the same error on every rank, never a rank left waiting in a collective."""
    error = None
    try:
        check_pair(learner, reference, get_loss(config.loss))
        if get_policy(config.policy).scored:
            weighted_outputs(config, learner, reference)
        n = len(learner if learner is not None else reference)
    except (TypeError, ValueError) as e:
        error, n = e, 0
    device = device_of(learner if learner is not None else reference)
    if not isinstance(device, torch.device):
        device = torch.device("cpu")
    mine = torch.tensor([n, int(error is not None)], dtype=torch.int64, device=device)
    sizes, failed = ex.all_gather(mine).T.tolist()
    if error is not None:
        raise error
    if any(failed):
        bad = [r for r, f in enumerate(failed) if f]
        raise RuntimeError(
            f"global selection aborted on every rank: rank(s) {bad} rejected their outputs "
            "(their own error says why)"
        )
    if len(set(sizes)) > 1:
        raise ValueError(
            f"every rank must hold the same number of candidates (B / world_size); the shards "
            f"hold {sizes} (ranks 0..{len(sizes) - 1}). Choose a super-batch size B divisible "
            f"by world_size = {len(sizes)}"
        )
    return sizes[0], device


def _super_batch_scores(state, ex: Exchange) -> torch.Tensor:
    """Independent scores of this rank's candidates against the whole super-batch."""
    columns = ex.all_gather(state.column_outputs()).flatten(0, 1)  # (B, D'): every text emb.
    rows, cols = state.super_batch_terms(columns)  # (k, n) complete, (k, B) partial
    k, n = cols.shape[0], state.size
    to_owners = cols.reshape(k, ex.world_size, n).transpose(0, 1)  # (W, k, n): by owner rank
    parts = ex.all_to_all(to_owners, [1] * ex.world_size, [1] * ex.world_size)
    return state.scores_from_terms(rows, state.merge_columns(parts))


def _global_top(scores, k, temperature, generator, state, ex: Exchange) -> torch.Tensor:
    """Global positions of the top k perturbed scores over every shard, best first."""
    n, W = state.size, ex.world_size
    p = perturbed_scores(scores, temperature, generator, n * W, state.offset)
    if k >= n:  # every candidate of this shard may be needed: send them all, positions implied
        values = ex.all_gather(p)
        positions = torch.arange(n * W, device=p.device).reshape(W, n)
    else:
        top = torch.topk(p, k)
        values = ex.all_gather(top.values)
        positions = ex.all_gather(top.indices + state.offset)
    best = torch.topk(values.flatten(), k).indices
    return positions.flatten()[best]


def _joint_sample(state, b: int, config: SelectionConfig, generator, ex: Exchange):
    """jestkit.core.sampler.joint_sample over shards: the chunks are drawn by a global top-c
    merge and shared with every rank, so every rank makes the same draws."""
    first = _super_batch_scores(state, ex) if state.first_is_independent else None

    def draw(scores: torch.Tensor, c: int) -> torch.Tensor:
        return _global_top(scores, c, config.temperature, generator, state, ex)

    def add(local: torch.Tensor, chunk: torch.Tensor) -> None:
        state.absorb(_share_chunk(state.shared(local), chunk, state.size, ex), chunk)

    return joint_sample(
        state, b, config.n_chunks, config.temperature, generator, config.normalize_gains,
        first_scores=first, draw=draw, add=add,
    )  # fmt: skip


def _share_chunk(mine: torch.Tensor, chunk: torch.Tensor, n: int, ex: Exchange) -> torch.Tensor:
    """Every rank's rows of the chunk -> the whole chunk's rows, in chunk order, on every rank."""
    W = ex.world_size
    owner = torch.div(chunk, n, rounding_mode="floor")
    counts = torch.bincount(owner, minlength=W).tolist()
    received = ex.all_to_all(mine.repeat(W, 1), [len(mine)] * W, counts)  # by owner rank
    rows = torch.empty_like(received)
    rows[torch.argsort(owner, stable=True)] = received
    return rows
