"""Comparing policies on uniform's frontier: speed-ups, a table and a plot.

Uniform is trained at several budgets, each with its own schedule; its final accuracies form a
frontier (jestkit.payoff.frontier). A policy run's speed-up in steps, FLOPs or training
seconds is uniform's cost to reach the run's final accuracy on that frontier over the run's own.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from jestkit.engine.files import save_png
from jestkit.payoff.frontier import Speedup, speedup

METRIC = "zero_shot"
COSTS = ("steps", "flops", "seconds")


def run_cost(result: dict, cost: str) -> float:
    """A run's cost: its steps, its total FLOPs (training + scoring) or its training seconds
    (wall time without evaluations)."""
    if cost == "steps":
        return result["steps"]
    if cost == "flops":
        return sum(result["flops"].values())
    if cost == "seconds":
        return result["train_seconds"]
    raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")


def uniform_frontier(uniform: list[dict], cost: str, metric: str = METRIC
                     ) -> list[tuple[float, float]]:  # fmt: skip
    """(cost, final `metric`) per budget of uniform's runs; several runs of one budget (seeds)
    give one point, their means."""
    by_budget: dict[int, list[dict]] = {}
    for r in uniform:
        by_budget.setdefault(r["steps"], []).append(r)
    return [
        (statistics.fmean(run_cost(r, cost) for r in rs),
         statistics.fmean(r["final"][metric] for r in rs))
        for _, rs in sorted(by_budget.items())
    ]  # fmt: skip


def speedups(uniform: list[dict], result: dict, metric: str = METRIC) -> dict[str, Speedup]:
    """The run's speed-up in each cost, read off uniform's frontier of `metric`."""
    return {
        cost: speedup(uniform_frontier(uniform, cost, metric), result["final"][metric],
                      run_cost(result, cost))
        for cost in COSTS
    }  # fmt: skip


def compare(uniform: list[dict], runs: dict[str, dict], metric: str = METRIC) -> dict[str, dict]:
    """Per policy run: its final metrics, its costs and its speed-ups over uniform's frontier
    of `metric`."""
    rows = {}
    for name, run in runs.items():
        row = {f"final_{k}": v for k, v in run["final"].items()}
        row.update({"steps": run["steps"], "total_flops": run_cost(run, "flops"),
                    "train_seconds": run["train_seconds"]})  # fmt: skip
        for cost, s in speedups(uniform, run, metric).items():
            row[f"speedup_{cost}"] = {"value": s.value, "bound": s.bound}
        row["scoring_flops_share"] = run["flops"]["learner_score"] / max(1, row["total_flops"])
        row["selected_noise_fraction"] = run.get("selected_noise_fraction")
        rows[name] = row
    return rows


def _speedup_text(s: dict) -> str:
    return str(Speedup(s["value"], s["bound"]))


def table(uniform: list[dict], rows: dict[str, dict]) -> str:
    lines = ["uniform's frontier (each budget its own schedule):"]
    for r in sorted(uniform, key=lambda r: r["steps"]):
        lines.append(
            f"  {r['steps']:>5} steps  zero-shot {r['final'][METRIC]:.4f}  "
            f"{run_cost(r, 'flops') / 1e12:7.3f} TFLOPs  {r['train_seconds']:6.0f} s"
        )
    head = (
        f"{'policy':<26} {'steps':>5} {'zero-shot':>9} {'i2t R@1':>7} {'t2i R@1':>7} | "
        f"{'× steps':>8} {'× FLOPs':>8} {'× time':>8} {'score%':>6} | {'noisy sel.':>10}"
    )
    lines += ["", head, "-" * len(head)]
    for name, r in rows.items():
        fractions = r["selected_noise_fraction"] or {}
        noisy = fractions.get("mismatched", 0.0) + fractions.get("junk", 0.0)
        lines.append(
            f"{name:<26} {r['steps']:>5} {r['final_zero_shot']:>9.4f} {r['final_i2t_r1']:>7.4f} "
            f"{r['final_t2i_r1']:>7.4f} | {_speedup_text(r['speedup_steps']):>8} "
            f"{_speedup_text(r['speedup_flops']):>8} {_speedup_text(r['speedup_seconds']):>8} "
            f"{100 * r['scoring_flops_share']:>6.1f} | {noisy:>10.3f}"
        )
    lines.append(
        "× = uniform's steps (FLOPs, training seconds) to reach the policy's final zero-shot "
        "accuracy on its frontier, over the policy's own; '> k×': uniform's largest budget never "
        "got there, '< k×': its smallest already did. score%: share of FLOPs spent scoring; "
        "noisy sel.: share of trained pairs whose caption is wrong (mismatched or junk)."
    )
    return "\n".join(lines)


def verdict(rows: dict[str, dict]) -> str:
    """Which run to pick on this pool, in words, from compare()'s rows: the one with the highest
    final zero-shot accuracy, and the one with the largest saving in FLOPs (training and
    scoring) on uniform's frontier ('>': a lower bound, '<': an upper bound, as in the table)."""
    if not rows:
        return "no selecting run to compare with uniform"
    best = max(rows, key=lambda n: rows[n]["final_zero_shot"])
    cheap = max(rows, key=lambda n: rows[n]["speedup_flops"]["value"])
    return (
        f"On this pool: the highest final zero-shot accuracy is {best}'s "
        f"({rows[best]['final_zero_shot']:.4f}); the largest saving in FLOPs over uniform is "
        f"{cheap}'s ({_speedup_text(rows[cheap]['speedup_flops'])} fewer FLOPs to its accuracy)."
    )


def plot(uniform: list[dict], runs: dict[str, dict], path: str | Path, title: str = "",
         metric: str = METRIC, ylabel: str = "zero-shot top-1 (test)") -> None:  # fmt: skip
    """Final `metric` (default: zero-shot accuracy) against total FLOPs and against steps:
    uniform's frontier (one point per budget) and each policy's run (its evaluations along the
    way, dashed, ending at its final point); and each run's FLOPs by where they were spent."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), width_ratios=(1, 1, 0.8))
    for ax, cost, xlabel in (
        (axes[0], "flops", "total TFLOPs (training + scoring), log"),
        (axes[1], "steps", "training steps, log"),
    ):
        scale = 1e12 if cost == "flops" else 1
        front = uniform_frontier(uniform, cost, metric)
        ax.plot([c / scale for c, _ in front], [a for _, a in front], "k-o", ms=4,
                label="uniform (one point per budget)")  # fmt: skip
        for name, run in runs.items():
            xs = [(h["flops"] if cost == "flops" else h["step"]) / scale for h in run["history"]]
            line = ax.plot(xs[1:], [h[metric] for h in run["history"]][1:], "--", lw=1)
            ax.plot(run_cost(run, cost) / scale, run["final"][metric], "o", ms=6,
                    color=line[0].get_color(), label=name)  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _flops_bars(axes[2], {f"uniform-{r['steps']}": r for r in uniform} | runs)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def _flops_bars(ax, runs: dict[str, dict]) -> None:
    """Total FLOPs of each run, stacked by where they were spent."""
    names = list(runs)
    bottom = [0.0] * len(names)
    for part, label in (
        ("train", "training"),
        ("learner_score", "learner scoring"),
        ("reference_score", "reference scoring"),
    ):
        values = [runs[n]["flops"][part] / 1e12 for n in names]
        if any(values):
            ax.barh(names, values, left=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("TFLOPs over the whole run")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="x")
