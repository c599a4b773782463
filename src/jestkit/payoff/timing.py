"""Time to accuracy from measured per-step rates: the arithmetic of benchmarks/timing.py.

A method's time to run a budget of n steps is

    seconds(n) = (measured seconds per training step) × n + (measured one-off seconds)

where the seconds per step are the mean, over the measured steps of a timed run (its first
steps, which count FLOPs and warm up, skipped), of the sum of the step's training phases
(jestkit.engine.timing: data, scoring, selection, forward/backward, optimizer, account; not
evaluation or checkpoints, which a user sets apart from the method), and the one-off seconds
are the reference's training (its per-step rate × its steps) and its pass over the pool (its
per-example rate × the pool). A whole run is never timed: a per-step rate is measured.

Accuracies come from the budget-matched frontier (benchmarks/frontier.py): each budget's final
accuracy. A method's seconds (or FLOPs) to reach an accuracy are read off its own frontier
by interpolation in log cost (jestkit.payoff.frontier.cost_to_reach), and its speed-up at
uniform's accuracy of a budget is uniform's cost at that budget over the method's cost to reach
it. Everything here is pure: rows in, numbers out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from jestkit.payoff.frontier import cost_to_reach, envelope

# a training step's phases (jestkit.engine.timing.PHASES without evaluation and checkpoints)
TRAIN_PHASES = ("data", "learner_score", "reference_score", "select", "forward_backward",
                "optimizer", "account")  # fmt: skip


def spread(values: Sequence[float]) -> dict:
    """Mean, standard deviation (0 for one value), smallest, largest and count."""
    values = list(values)
    if not values:
        raise ValueError("spread of no values")
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def step_rate(timing: dict, clock: str, skip: int) -> dict[str, float]:
    """Mean seconds per step of each training phase the run has, over its steps after the
    first `skip`, and "step": their sum. timing: a result.json's "timing"; clock: "cpu" or
    "wall"."""
    per_step = timing["per_step"][clock]
    n = len(per_step["step"])
    if n <= skip:
        raise ValueError(f"the run has {n} steps: none left after skipping {skip}")
    rate = {p: statistics.fmean(per_step[p][skip:]) for p in TRAIN_PHASES if p in per_step}
    rate["step"] = sum(rate.values())
    return rate


def frontier_costs(points: Sequence[tuple[int, float]], per_step: float, one_off: float = 0.0
                   ) -> list[tuple[float, float]]:  # fmt: skip
    """(budget in steps, accuracy) points -> (cost, accuracy): cost = per_step × budget +
    one_off (seconds from a measured rate, or FLOPs from the measured FLOPs per step)."""
    if not per_step > 0 or one_off < 0:
        raise ValueError(f"need per_step > 0 and one_off >= 0, got {per_step!r}, {one_off!r}")
    return [(per_step * budget + one_off, acc) for budget, acc in points]


def speedups_at_uniform(uniform: Sequence[tuple[float, float]],
                        method: Sequence[tuple[float, float]]) -> list[dict]:  # fmt: skip
    """For each of uniform's budgets, its accuracy (on the envelope: the best up to then), its
    cost, the method's cost to reach that accuracy on the method's own frontier, and the
    speed-up (uniform's cost / the method's). bound: "=" interpolated; ">" the method's
    smallest budget already got there (its cost an upper bound, the speed-up a lower bound);
    "–" it never got there (cost and speed-up None). Both lists are (cost, accuracy)."""
    rows = []
    for cost, acc in envelope(uniform):
        spent, where = cost_to_reach(method, acc)
        if where == ">":
            rows.append({"accuracy": acc, "uniform": cost, "method": None, "speedup": None,
                         "bound": "–"})  # fmt: skip
            continue
        rows.append({"accuracy": acc, "uniform": cost, "method": spent, "speedup": cost / spent,
                     "bound": "=" if where == "=" else ">"})  # fmt: skip
    return rows


def time_against_flops(time_rows: Sequence[dict], flops_rows: Sequence[dict]) -> list[float | None]:
    """The ratio (time speed-up) / (FLOPs speed-up) at each of uniform's budgets (None where
    the method never reached it); rows from speedups_at_uniform over the same budgets."""
    out = []
    for t, f in zip(time_rows, flops_rows, strict=True):
        if not math.isclose(t["accuracy"], f["accuracy"]):
            raise ValueError("time and FLOPs rows are not at the same accuracies")
        ok = t["speedup"] is not None and f["speedup"] is not None
        out.append(t["speedup"] / f["speedup"] if ok else None)
    return out
