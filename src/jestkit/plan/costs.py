"""What a method costs on this machine, from real steps of it: FLOPs per step by part and
seconds per step, process CPU time and wall time.

FLOPs are the same every step and are counted (jestkit.engine.flops). Seconds are not: the first
step pays one-off costs (allocations, lazy set-up) and any step may share the machine with other
work, so a method runs one warm-up step and then TIMED_STEPS timed ones, and the fastest of those
is its step time, the least disturbed. CPU time is this process's (all its threads; DataLoader
worker processes, which the plan does not start, are not in it). On a GPU the trainer's phase
clock synchronises the device at each phase's edges, so a step's wall time holds its kernels."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from jestkit.engine.step import train_step
from jestkit.plan.rules import MethodCost

TIMED_STEPS = 2  # timed steps after the warm-up step


def timed(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, dict[str, float]]:
    """(fn's result, its seconds {"cpu": process CPU time, "wall": wall time})."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}


def measure_method(trainer, uses_reference: bool, fixed: float = 0.0) -> tuple[MethodCost, float]:
    """A method's MethodCost from 1 + TIMED_STEPS real steps of `trainer`, and the FLOPs those
    steps cost. fixed: what the method costs once before its steps, in FLOPs."""
    train_step(trainer)  # warm-up
    seconds = {"cpu": math.inf, "wall": math.inf}
    for _ in range(TIMED_STEPS):
        _, s = timed(train_step, trainer)
        seconds = {k: min(seconds[k], s[k]) for k in seconds}
    per_step = {k: v or 0 for k, v in trainer.flops.per_step.items()}
    cost = MethodCost(per_step["train"], per_step["learner_score"], uses_reference, fixed, seconds)
    return cost, (1 + TIMED_STEPS) * cost.per_step


def reference_seconds(train: dict[str, float] | None, per_pair: dict[str, float],
                      pool_size: int) -> dict:  # fmt: skip
    """The reference's seconds {"cpu", "wall"}: its training as its record says (None when the
    record has none: a reference built before jestkit recorded it, or another tool's), its pass
    over the pool as the plan's own reference forward on held-out pairs took per pair (decoding
    included on shards), times the pool's pairs, and their total (None without the training)."""
    passed = {k: v * pool_size for k, v in per_pair.items()}
    total = None if train is None else {k: train[k] + passed[k] for k in passed}
    return {"train": train, "pass": passed, "per_pair": per_pair, "total": total}
