"""The two collectives global selection and redistribution use, counting the bytes they move.

Every exchange is an all_gather (all ranks contribute equal-sized tensors) or an all_to_all with
uneven splits along dim 0. `Traffic` counts, per rank, the bytes sent to and received from the
*other* ranks (a rank's copy to itself is free): the payload any algorithm must move, whatever
the backend's ring or tree does on the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Traffic:
    """Bytes this rank sent to and received from other ranks, and collectives issued."""

    sent: int = 0
    received: int = 0
    collectives: int = 0

    def add(self, other: Traffic) -> None:
        self.sent += other.sent
        self.received += other.received
        self.collectives += other.collectives


def group_rank_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank, world_size) in `group`; (0, 1) when torch.distributed is not initialised."""
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


class Exchange:
    """A process group (None: the default group) and the traffic counted on it."""

    def __init__(self, group: dist.ProcessGroup | None = None, traffic: Traffic | None = None):
        self.group = group
        self.rank, self.world_size = group_rank_size(group)
        self.traffic = traffic if traffic is not None else Traffic()

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """(world_size, *t.shape): every rank's t (at least 1-d, same shape on every rank)."""
        if self.world_size == 1:
            return t[None]
        t = t.contiguous()
        out = t.new_empty((self.world_size * t.shape[0], *t.shape[1:]))
        dist.all_gather_single(out, t, group=self.group)
        nbytes = t.numel() * t.element_size()
        self._count(nbytes * (self.world_size - 1), nbytes * (self.world_size - 1))
        return out.reshape(self.world_size, *t.shape)

    def all_to_all(
        self, send: torch.Tensor, send_counts: list[int], recv_counts: list[int]
    ) -> torch.Tensor:
        """Rows send[...] split by send_counts go to ranks 0, 1, ...; returns the rows received,
        grouped by source rank in rank order (recv_counts[r] rows from rank r)."""
        if self.world_size == 1:
            return send
        send = send.contiguous()
        out = send.new_empty((sum(recv_counts), *send.shape[1:]))
        dist.all_to_all_single(out, send, recv_counts, send_counts, group=self.group)
        row = math.prod(send.shape[1:]) * send.element_size()
        others = [r for r in range(self.world_size) if r != self.rank]
        self._count(
            row * sum(send_counts[r] for r in others), row * sum(recv_counts[r] for r in others)
        )
        return out

    def _count(self, sent: int, received: int) -> None:
        self.traffic.sent += sent
        self.traffic.received += received
        self.traffic.collectives += 1
