"""The ranks agree at start-up: the same settings, and no rank failing alone.

Every rank of a torchrun job is started with its own command line. A rank given other settings
(another --training.seed, other shards, another filter ratio) would select differently from the
others or call other collectives, and then stop in a gloo or NCCL traceback, or, worse, finish
with a wrong result. A check that fails on one rank only (its shards do not match the cache)
would leave the others waiting in their next collective. So before the first collective of the
run, every rank sends its settings and its start-up error, if any, to all (one all_gather):

    with agreed(ctx, settings) as shared:   # settings: {'--training.seed': 0, ...}
        ...build the data, model and reference...
        shared["--shards.pattern's files"] = [...]   # what the body learnt, compared as well

On every rank, then: the first failing rank's message, else the first setting that differs from
rank 0's, naming it and both values; one line, never the whole state of a loader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist

from jestkit.dropin.distributed.group import Distributed

MAX_SHOWN = 200  # characters of a value or message from another rank


class RankStopped(ValueError):
    """Another rank stopped at start-up; its message says why."""


def one_line(error: BaseException | str) -> str:
    """An error's message as one line of at most 500 characters."""
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    return first if len(first) <= 500 else first[:500] + " ..."


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + " ..."


def agree(ctx: Distributed, settings: dict, error: BaseException | None = None) -> None:
    """Exchange `settings` and `error` over the ranks (a collective: call on every rank). On
    every rank: a ValueError naming the first setting that differs from rank 0's (the cause,
    when a rank also failed because of it); else `error` on its rank and RankStopped, with its
    message, on the others. A setting one rank never reached (it failed first) is not compared."""
    if ctx.world_size == 1 or not dist.is_initialized():
        if error is not None:
            raise error
        return
    every = [None] * ctx.world_size
    mine = (dict(settings), None if error is None else one_line(error))
    dist.all_gather_object(every, mine, group=ctx.group)
    first = every[0][0]
    for rank, (theirs, _) in enumerate(every[1:], start=1):
        for name in (k for k in first if k in theirs):
            if first[name] != theirs[name]:
                raise ValueError(
                    f"the ranks were started with other settings: {name} is "
                    f"{_shown(first[name])} on rank 0 and {_shown(theirs[name])} on rank "
                    f"{rank}; start every rank with the same command line and files"
                ) from None
    if error is not None:
        raise error
    for rank, (_, message) in enumerate(every):
        if message is not None:
            raise RankStopped(f"rank {rank} stopped at start-up, stopping every rank: {message}")


@contextlib.contextmanager
def agreed(ctx: Distributed, settings: dict | None = None) -> Iterator[dict]:
    """Run the start-up in the with-block, then agree(ctx, settings + what the block added to
    the dict it gets, the block's error). The block must not call collectives itself."""
    shared = dict(settings or {})
    try:
        yield shared
    except Exception as e:  # noqa: BLE001 - any start-up failure is every rank's to know
        agree(ctx, shared, e)
        raise
    agree(ctx, shared)


__all__ = ["RankStopped", "agree", "agreed", "one_line"]
