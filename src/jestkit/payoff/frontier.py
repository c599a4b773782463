"""Reading speed-ups off a budget-matched frontier, the way the JEST paper measures them.

A learning-rate schedule that decays to zero at the end of a run sets the final accuracy as much
as the data does, so comparing policies on curves of one shared budget is biased. Instead, every
policy is trained at several budgets, each run with its own schedule, and only each run's
*final* accuracy is kept: a frontier of (cost, accuracy) points, cost being steps or total FLOPs.

The speed-up of a policy run that reached accuracy `a` at cost `c` is

    uniform's cost to reach a  /  c

where uniform's cost to reach `a` is read off uniform's frontier: the upper envelope of its
points (the best accuracy any budget up to that cost reached, so noise never makes the frontier
go down), interpolated linearly in log cost between the two budgets that bracket `a`. Nothing is
extrapolated: when uniform's largest budget never reaches `a`, the speed-up is only known to be
larger than (uniform's largest cost) / c, a lower bound ("> k×"); when uniform's smallest budget
already reaches `a`, it is at most (uniform's smallest cost) / c, an upper bound ("< k×").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Speedup:
    """A speed-up read off a frontier: `value` exactly ("="), or a bound ("<" or ">")."""

    value: float
    bound: str = "="  # "=": interpolated; ">": uniform never got there; "<": it always did

    def __post_init__(self):
        if self.bound not in ("=", "<", ">"):
            raise ValueError(f"bound must be '=', '<' or '>', got {self.bound!r}")

    def __str__(self) -> str:
        prefix = "" if self.bound == "=" else self.bound + " "
        return f"{prefix}{self.value:.2f}×"


def envelope(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(cost, accuracy) points sorted by cost, each accuracy raised to the best so far."""
    if not points:
        raise ValueError("the frontier needs at least one (cost, accuracy) point")
    out: list[tuple[float, float]] = []
    best = -math.inf
    for cost, acc in sorted(points):
        if not cost > 0 or not math.isfinite(cost):
            raise ValueError(f"frontier costs must be positive and finite, got {cost!r}")
        if not math.isfinite(acc):
            raise ValueError(f"frontier accuracies must be finite, got {acc!r}")
        best = max(best, acc)
        out.append((cost, best))
    return out


def cost_to_reach(points: Sequence[tuple[float, float]], target: float) -> tuple[float, str]:
    """The cost at which the frontier first reaches `target`: (cost, "=") interpolated in log
    cost; (smallest cost, "<") if its first point is already there; (largest cost, ">") if it
    never gets there."""
    env = envelope(points)
    if env[0][1] >= target:
        return env[0][0], "<"
    for (c0, a0), (c1, a1) in zip(env, env[1:], strict=False):
        if a1 >= target:  # a0 < target <= a1, so a1 > a0
            t = (target - a0) / (a1 - a0)
            return math.exp(math.log(c0) + t * (math.log(c1) - math.log(c0))), "="
    return env[-1][0], ">"


def speedup(
    baseline: Sequence[tuple[float, float]], accuracy: float, cost: float
) -> Speedup:
    """How many times less than the baseline's frontier a run reaching `accuracy` at `cost`
    spent (see the module docstring for the bounds)."""
    if not cost > 0:
        raise ValueError(f"cost must be positive, got {cost!r}")
    base_cost, bound = cost_to_reach(baseline, accuracy)
    return Speedup(base_cost / cost, bound)
