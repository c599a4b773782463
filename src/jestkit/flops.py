"""FLOPs measured with torch.utils.flop_counter, not hand formulas (DESIGN.md section 3).

FlopCounterMode counts the FLOPs of matrix multiplies (mm, addmm, bmm, baddbmm: 2 * m * n * k),
convolutions, and fused attention kernels where it knows them (not the CPU flash kernel, which
is why jestkit's models write attention as matmuls). It does not count elementwise work
(activations, normalisation, softmax, the optimizer's update); for transformers this is a
small share. A backward pass is counted when it runs inside the counter (about twice the
forward's matmul FLOPs).

For a fixed model and input shape the count is the same on every call, so a training loop may
measure one step of each kind and multiply, rather than count every step:

    _, train_flops = count_train_flops(lambda: model.loss(*model(images, tokens)))
    _, score_flops = count_no_grad_flops(model.embeddings, super_images, super_tokens,
                                         patch_size=14)
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


def count_train_flops(
    loss_fn: Callable[..., torch.Tensor], *args, **kwargs
) -> tuple[torch.Tensor, int]:
    """Forward and backward of a training step: loss = loss_fn(...); loss.backward().

    Returns (the detached loss, FLOPs of forward + backward). Gradients are accumulated in
    the parameters' .grad as usual; the optimizer step is the caller's (and is not counted).
    """

    def step():
        loss = loss_fn(*args, **kwargs)
        loss.backward()
        return loss.detach()

    return count_flops(step)
