"""Build the reference cache with every rank of a torchrun job scoring its share of the data.

Each rank runs jestkit.dropin.cache.build_cache with its rank (part k belongs to rank
k % world_size); then the ranks agree on the outcome, and rank 0 validates the parts (reading
each back with its page checksums verified) and writes the manifest, with each part's size and
sha256, atomically (jestkit.dropin.cache.finalize): the cache is valid only once every part is
there, and its manifest is the one a single-process build writes. Ids may be of any kind that
jestkit.dropin.cache supports (int64, str, uid128). A failure on any rank is reported on every
rank. An interrupted build, on any number of ranks, resumes on any number of ranks: complete
parts are kept and skipped, half-written parts were never renamed
into place, and finalize checks that the parts hold every id exactly once.

Ranks finish at different times (a resumed build may leave one rank nothing to do), so they wait
for each other on a separate gloo group whose timeout is `wait` (default a day), not on the
training group's short one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from jestkit.dropin.cache import CacheError, CacheMeta, Ids, build_cache, finalize
from jestkit.dropin.distributed.comm import group_rank_size


def build_cache_sharded(
    path: str | os.PathLike,
    ids: Ids,
    compute: Callable[[Ids], dict[str, torch.Tensor]],
    meta: CacheMeta,
    *,
    group: dist.ProcessGroup | None = None,
    batch_size: int = 1024,
    rows_per_part: int = 8192,
    progress: bool = True,
    wait: timedelta = timedelta(days=1),
) -> None:
    """Every rank of `group` calls this with the same arguments; returns once the manifest is
    written, on every rank; raises CacheError on every rank if any rank failed."""
    rank, world_size = group_rank_size(group)
    if world_size == 1:
        build_cache(path, ids, compute, meta, batch_size, 0, 1, rows_per_part, progress)
        return
    ranks = None if group is None else dist.get_process_group_ranks(group)
    waiting = dist.new_group(ranks, timeout=wait, backend="gloo")
    try:
        error = _try(
            lambda: build_cache(
                path, ids, compute, meta, batch_size, rank, world_size, rows_per_part, progress
            )
        )
        _agree(error, "building its parts", waiting, world_size)
        error = _try(lambda: finalize(path, ids, meta)) if rank == 0 else None
        _agree(error, "finalizing", waiting, world_size)
    finally:
        dist.destroy_process_group(waiting)


def _try(fn) -> BaseException | None:
    try:
        fn()
    except Exception as e:  # reported to every rank by _agree, then raised here
        return e
    return None


def _agree(error: BaseException | None, what: str, group, world_size: int) -> None:
    """Share every rank's outcome; raise on every rank if any failed."""
    failed = torch.zeros(world_size, dtype=torch.int64)
    mine = torch.tensor([int(error is not None)], dtype=torch.int64)
    dist.all_gather_single(failed, mine, group=group)
    bad = [r for r, f in enumerate(failed.tolist()) if f]
    if not bad:
        return
    msg = (
        f"reference cache build failed on rank(s) {bad} while {what}; the complete parts are "
        "kept: re-run the same command (on any number of ranks) to resume"
    )
    if error is not None:
        raise CacheError(f"{msg}: {error}") from error
    raise CacheError(msg)
