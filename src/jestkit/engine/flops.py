"""FLOPs measured with torch.utils.flop_counter, not hand formulas (docs/design.md, "FLOPs").

FlopCounterMode counts the FLOPs of matrix multiplies (mm, addmm, bmm, baddbmm: 2 * m * n * k),
convolutions, and fused attention kernels where it knows them (not the CPU flash kernel, which
is why jestkit's models write attention as matmuls). It does not count elementwise work
(activations, normalisation, softmax, the optimizer's update); for transformers this is a
small share. A backward pass is counted when it runs inside the counter (about twice the
forward's matmul FLOPs).

For a fixed model and input shape the count is the same on every call, so a training loop may
measure one step of each kind and multiply, rather than count every step (FlopMeter):

    meter = FlopMeter()
    loss = meter.run("train", forward_backward, batch)     # measured once, then counted
    emb = meter.run("learner_score", model.embeddings, images, tokens, patch_size=14)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, int]:
    """Run fn(*args, **kwargs) and return (its result, the FLOPs it performed)."""
    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return result, int(counter.get_total_flops())


def count_no_grad_flops(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, int]:
    """count_flops under torch.no_grad(): the cost of a scoring (inference) forward pass."""
    with torch.no_grad():
        return count_flops(fn, *args, **kwargs)


class FlopMeter:
    """FLOPs by kind over a run. The first call of each kind is measured (count_flops); shapes
    never change between steps, so every later call costs the same and is counted, not
    measured. world_size: the processes doing the same work (their FLOPs are added)."""

    KINDS = ("train", "learner_score", "reference_score")

    def __init__(self, world_size: int = 1):
        self.world_size = world_size
        self.total = dict.fromkeys(self.KINDS, 0)
        self.per_step: dict[str, int | None] = dict.fromkeys(self.KINDS)

    def run(self, kind: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """fn(*args, **kwargs), its FLOPs added to `kind`."""
        if self.per_step[kind] is None:
            result, self.per_step[kind] = count_flops(fn, *args, **kwargs)
        else:
            result = fn(*args, **kwargs)
        self.total[kind] += self.per_step[kind] * self.world_size
        return result

    def sum(self) -> int:
        return sum(self.total.values())

    def state_dict(self) -> dict:
        return {"flops": dict(self.total), "step_flops": dict(self.per_step)}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.per_step = dict(state["flops"]), dict(state["step_flops"])
