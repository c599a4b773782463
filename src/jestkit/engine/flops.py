"""FLOPs measured with torch.utils.flop_counter, not hand formulas (docs/design.md, "FLOPs").

FlopCounterMode counts the FLOPs of matrix multiplies (mm, addmm, bmm, baddbmm: 2 * m * n * k),
convolutions, and the fused attention kernels it knows (the GPU ones). It does not know the two
that PyTorch runs on the CPU, and would count them as zero; jestkit adds their formulas
(ATTENTION_FLOPS), so that an open_clip model, whose attention is fused, is counted in full:

* F.scaled_dot_product_attention -> aten._scaled_dot_product_flash_attention_for_cpu (and its
  backward): 2 * s_q * s_k * (d_q + d_v) per batch and head, as the GPU kernels are counted;
* nn.MultiheadAttention's inference fast path (eval mode, no gradients) ->
  aten._native_multi_head_attention, one kernel for the input projections, the attention and the
  output projection.

Causal masks are not subtracted (as for the GPU kernels): attention is counted as dense. It does
not count elementwise work (activations, normalisation, softmax, the optimizer's update); for
transformers this is a small share. A backward pass is counted when it runs inside the counter
(about twice the forward's matmul FLOPs).

For a fixed model and input shape the count is the same on every call, so a training loop may
measure one step of each kind and multiply, rather than count every step (FlopMeter):

    meter = FlopMeter()
    loss = meter.run("train", forward_backward, batch)     # measured once, then counted
    emb = meter.run("learner_score", model.embeddings, images, tokens, View(patch_size=14))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _native_mha(query, key, value, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
    """(N, L, E) queries over (N, S, E) keys: the q, k, v projections, the scores and the
    weighted sum (over all heads: E wide), and the output projection."""
    if len(query) != 3 or len(key) != 3:
        raise NotImplementedError(f"FLOPs of a {len(query)}-d fused multi-head attention")
    n, length, e = query
    keys = key[1]
    projections = 2 * n * length * e * e + 2 * 2 * n * keys * e * e + 2 * n * length * e * e
    return projections + 2 * 2 * n * length * keys * e


# The fused attention kernels PyTorch runs on the CPU, which torch.utils.flop_counter does not
# know (op -> formula over the arguments' shapes, FlopCounterMode's custom_mapping).
ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
    aten._native_multi_head_attention: _native_mha,
}


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode (no display) that also counts the CPU's fused attention."""
    return FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS)


def count_flops(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, int]:
    """Run fn(*args, **kwargs) and return (its result, the FLOPs it performed)."""
    with flop_counter() as counter:
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
