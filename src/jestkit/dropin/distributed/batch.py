"""Redistribute the selected examples so that every rank trains on exactly b / world_size.

After global selection every rank knows the b selected global positions; each example lives on
the rank whose shard holds it (position // n). A varying per-rank batch would hang DDP and
change the learning-rate schedule with the world size, so the examples move:

    rule: every rank keeps its own selected examples, in selection order, up to b / world_size;
          the others go, in selection order, to the ranks holding fewer, lowest rank first.

This moves as little as any rule can (only the surplus travels) and is computed by every rank
from the positions alone. Each rank's batch is returned in selection order. b must be divisible
by world_size: otherwise `per_rank_batch` raises, the same error on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist

from jestkit.dropin.distributed.comm import Exchange, Traffic, group_rank_size


def per_rank_batch(b: int, world_size: int) -> int:
    """b / world_size, or a ValueError naming sizes that work."""
    if world_size < 1 or b % world_size:
        raise ValueError(
            f"the selected batch b = {b} does not split evenly over world_size = {world_size} "
            f"ranks; every rank must train on the same number of examples. Choose b (b = "
            f"(1 - filter_ratio) * B) divisible by {world_size}, e.g. "
            f"{b - b % world_size} or {b - b % world_size + world_size}"
        )
    return b // world_size


def assign_ranks(selected: torch.Tensor, shard_size: int, world_size: int) -> torch.Tensor:
    """(b,) the rank that trains on each selected example, by the rule above."""
    per = per_rank_batch(len(selected), world_size)
    owner = torch.div(selected, shard_size, rounding_mode="floor")
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=world_size)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_owner = torch.empty_like(owner)
    rank_in_owner[order] = torch.arange(len(owner), device=owner.device) - starts[owner[order]]
    keep = rank_in_owner < per
    dest = torch.where(keep, owner, -1)
    need = per - torch.clamp(counts, max=per)
    dest[~keep] = torch.repeat_interleave(torch.arange(world_size, device=owner.device), need)
    return dest


def rank_positions(selected: torch.Tensor, shard_size: int, rank: int, world_size: int):
    """Indices into `selected` of the examples `rank` trains on, in selection order."""
    return torch.nonzero(assign_ranks(selected, shard_size, world_size) == rank).flatten()


def redistribute(
    data,
    selected: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    traffic: Traffic | None = None,
):
    """This rank's b / world_size selected examples, gathered from the ranks that hold them.

    data: this rank's shard of the super-batch, a tensor or a dict / list / tuple of tensors
    whose dim 0 is the shard size n (same n on every rank). selected: the (b,) global positions
    from select_global, the same on every rank. Returns the same structure, rows in selection
    order.
    """
    ex = Exchange(group, traffic)
    rank, W = group_rank_size(group)
    leaves = _leaves(data)
    n = leaves[0].shape[0]
    selected = selected.to(leaves[0].device)
    dest = assign_ranks(selected, n, W)
    owner = torch.div(selected, n, rounding_mode="floor")
    # what I send: my selected examples, grouped by destination, in selection order within
    send = torch.nonzero(owner == rank).flatten()
    send = send[torch.argsort(dest[send], stable=True)]
    send_counts = torch.bincount(dest[send], minlength=W).tolist()
    # what I get: my positions, grouped by owner as they arrive; put back in selection order
    mine = torch.nonzero(dest == rank).flatten()
    arrival = mine[torch.argsort(owner[mine], stable=True)]
    recv_counts = torch.bincount(owner[mine], minlength=W).tolist()
    place = torch.searchsorted(mine, arrival)
    rows = selected[send] - rank * n

    def move(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != n:
            raise ValueError(f"every tensor in data must have dim 0 = {n}, got {tuple(x.shape)}")
        got = ex.all_to_all(x[rows], send_counts, recv_counts)
        out = torch.empty_like(got)
        out[place] = got
        return out

    return _map(move, data)


def _leaves(data) -> list[torch.Tensor]:
    if torch.is_tensor(data):
        return [data]
    if isinstance(data, Mapping):
        values = list(data.values())
    elif isinstance(data, Sequence) and not isinstance(data, str):
        values = list(data)
    else:
        raise TypeError(
            f"data must be a tensor or a dict / list / tuple of tensors, got {type(data).__name__}"
        )
    leaves = [leaf for v in values for leaf in _leaves(v)]
    if not leaves:
        raise ValueError("data holds no tensor")
    return leaves


def _map(fn, data):
    if torch.is_tensor(data):
        return fn(data)
    if isinstance(data, Mapping):
        return type(data)((k, _map(fn, v)) for k, v in data.items())
    return type(data)(_map(fn, v) for v in data)


# --- a step's examples across the ranks ----------------------------------------------------------
# An examples batch here is anything with ids (a list or a tensor), images, tokens and meta (a
# dict of tensors), indexable by positions, that its type builds back from those four (as
# jestkit.data.source.Examples): the training loop's, whose source draws in memory on every rank
# or each rank's own candidates (jestkit.data.parallel).


def rank_slice(batch, rank: int, world_size: int):
    """This rank's B / world_size of a super-batch every rank holds whole (all on one process)."""
    n = len(batch) // world_size
    return batch if world_size == 1 else batch[slice(rank * n, (rank + 1) * n)]


def my_share(chosen, positions: torch.Tensor, shard_size: int, rank: int, world_size: int):
    """Of the selected examples `chosen` (every rank holds them, in selection order), the
    b / world_size this rank trains on (all of them on one process)."""
    if world_size == 1:
        return chosen
    return chosen[rank_positions(positions, shard_size, rank, world_size)]


def moved_share(mine, positions: torch.Tensor, rank: int, world_size: int, group=None):
    """From each rank's own candidates `mine`: (the whole selection's ids and metadata, every
    rank's, in selection order, with no pixels: what a step's statistics count; this rank's
    b / world_size selected examples, moved from the ranks that drew them: the rows my_share
    would give had every rank drawn the whole super-batch)."""
    here = redistribute({"images": mine.images, "tokens": mine.tokens},
                        positions.to(mine.images.device), group)  # fmt: skip
    ids = mine.ids if isinstance(mine.ids, list) else mine.ids.tolist()
    parts = [None] * world_size  # the ids and metadata are small: every rank's, to every rank
    dist.all_gather_object(parts, (ids, {k: v.cpu() for k, v in mine.meta.items()}), group=group)
    every_ids = [i for p in parts for i in p[0]]
    every_meta = {k: torch.cat([p[1][k] for p in parts]) for k in mine.meta}

    def pick(index: list[int]) -> tuple[list | torch.Tensor, dict[str, torch.Tensor]]:
        picked = [every_ids[i] for i in index]
        if not isinstance(mine.ids, list):
            picked = torch.tensor(picked, dtype=mine.ids.dtype)
        return picked, {k: v[index] for k, v in every_meta.items()}

    selected = positions.tolist()
    rows = rank_positions(positions.cpu(), len(mine), rank, world_size).tolist()
    build = type(mine)
    chosen_ids, chosen_meta = pick(selected)
    ours_ids, ours_meta = pick([selected[r] for r in rows])
    return (build(chosen_ids, mine.images[:0], mine.tokens[:0], chosen_meta),
            build(ours_ids, here["images"], here["tokens"], ours_meta))  # fmt: skip
