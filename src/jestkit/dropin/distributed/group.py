"""Joining the process group torchrun starts, and wrapping the learner in DDP.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every worker; `setup`
reads them (a plain `python` run is one process and needs no process group). The timeout bounds
every collective: if a rank dies or hangs mid-step, the others raise instead of waiting forever
(gloo raises at once when a peer's connection closes, or after the timeout when it hangs; NCCL's
watchdog aborts the process after the timeout). Keep it above the longest time one rank may spend
alone between two collectives (evaluation, checkpointing on rank 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

DEFAULT_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: its rank among world_size, its device, its process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(
    backend: str | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
    device: torch.device | str | None = None,
) -> Distributed:
    """Join the process group described by torchrun's environment variables.

    backend: 'nccl' when CUDA is available, else 'gloo'. device: default cuda:LOCAL_RANK (or
    cpu). Without WORLD_SIZE > 1 in the environment, returns a one-process Distributed.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if device is None:
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size == 1 and not dist.is_initialized():
        return Distributed(device=device)
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {missing} are not set: launch with torchrun, e.g. "
            "`torchrun --nproc-per-node=8 -m jestkit train ...`"
        )
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=timeout)
    return Distributed(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        group=dist.group.WORLD,
    )


def teardown(ctx: Distributed) -> None:
    """Leave the process group (call once, at the end of training, on every rank)."""
    if ctx.group is not None and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, ctx: Distributed, **ddp_kwargs) -> torch.nn.Module:
    """The learner in DistributedDataParallel (unchanged with one process). Score candidates
    with `unwrap(model)` under no_grad: that forward must not touch DDP's gradient hooks."""
    if ctx.world_size == 1:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(
        model.to(ctx.device), device_ids=device_ids, process_group=ctx.group, **ddp_kwargs
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def broadcast_parameters(model: torch.nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Copy rank 0's parameters and buffers to every rank (what DDP does when it wraps)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return
    src = dist.get_global_rank(group, 0) if group is not None else 0
    with torch.no_grad():
        for t in model.state_dict().values():
            dist.broadcast(t, src=src, group=group)


def average_gradients(model: torch.nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Average every parameter's gradient over the ranks, in one all_reduce: DDP's gradient
    sync, for a loop whose loss does not go through model.forward (DDP only hooks forward).
    A parameter without a gradient counts as zero, so every rank sends the same sizes."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    for p, g in zip(params, torch.split(flat, [g.numel() for g in grads]), strict=True):
        p.grad = g.view_as(p).clone()


def all_gather_with_grad(t: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Every rank's t concatenated along dim 0, differentiable: a contrastive loss over the
    global batch (every rank's embeddings as negatives) computed on each rank, with DDP's
    gradient averaging, gives the gradient of one process training on the whole batch."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return t
    return _AllGather.apply(t, group)


class _AllGather(torch.autograd.Function):
    """Forward: all_gather. Backward: every rank's gradient for my rows, summed (each rank's
    loss used them): reduce_scatter on NCCL; all_reduce then my slice on gloo, which lacks it."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group, ctx.n = group, t.shape[0]
        world_size = dist.get_world_size(group)
        out = t.new_empty((world_size * t.shape[0], *t.shape[1:]))
        dist.all_gather_single(out, t.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        rank = dist.get_rank(ctx.group)
        if dist.get_backend(ctx.group) == dist.Backend.GLOO:
            dist.all_reduce(grad, group=ctx.group)
            return grad[rank * ctx.n : (rank + 1) * ctx.n], None
        mine = grad.new_empty((ctx.n, *grad.shape[1:]))
        dist.reduce_scatter_single(mine, grad, group=ctx.group)
        return mine, None
