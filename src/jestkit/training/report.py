"""Comparing policies: steps and FLOPs to reach uniform's final accuracy, a table and curves."""

from __future__ import annotations

from pathlib import Path

METRIC = "zero_shot"


def first_reaching(history: list[dict], target: float, metric: str = METRIC) -> dict | None:
    """The first evaluation at which `metric` >= target, or None."""
    return next((h for h in history if h[metric] >= target - 1e-12), None)


def compare(runs: dict[str, dict], baseline: str = "uniform") -> dict[str, dict]:
    """Per policy: final metrics, steps and FLOPs to reach the baseline's final zero-shot
    accuracy (null if never), and speed-ups relative to the baseline reaching it itself."""
    target = runs[baseline]["final"][METRIC]
    base_hit = first_reaching(runs[baseline]["history"], target)
    rows = {}
    for name, run in runs.items():
        hit = first_reaching(run["history"], target)
        row = {
            "final_zero_shot": run["final"]["zero_shot"],
            "final_i2t_r1": run["final"]["i2t_r1"],
            "final_t2i_r1": run["final"]["t2i_r1"],
            "steps_to_target": hit["step"] if hit else None,
            "flops_to_target": hit["flops"] if hit else None,
            "speedup_steps": base_hit["step"] / hit["step"] if hit and hit["step"] else None,
            "speedup_flops": base_hit["flops"] / hit["flops"] if hit and hit["flops"] else None,
            "selected_noise_fraction": run["selected_noise_fraction"],
            "total_flops": run["flops"],
            "flops_per_step": run["flops_per_step"],
        }
        scoring = run["flops"]["learner_score"] + run["flops"]["reference_score"]
        row["scoring_flops_share"] = scoring / max(1, sum(run["flops"].values()))
        rows[name] = row
    return rows


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: dict[str, dict], target: float) -> str:
    head = (
        f"{'policy':<28} {'zero-shot':>9} {'i2t R@1':>8} {'t2i R@1':>8} | "
        f"{'steps→tgt':>9} {'×steps':>6} {'GFLOP→tgt':>10} {'×FLOPs':>6} "
        f"{'score%':>6} | {'noisy sel.':>10}"
    )
    lines = [f"target: uniform's final zero-shot top-1 = {target:.4f}", head, "-" * len(head)]
    for name, r in rows.items():
        noisy = (
            1.0
            - r["selected_noise_fraction"]["clean"]
            - r["selected_noise_fraction"].get("duplicate", 0.0)
        )
        gflops = None if r["flops_to_target"] is None else r["flops_to_target"] / 1e9
        lines.append(
            f"{name:<28} {r['final_zero_shot']:>9.4f} {r['final_i2t_r1']:>8.4f} "
            f"{r['final_t2i_r1']:>8.4f} | {_fmt(r['steps_to_target'], '>9')} "
            f"{_fmt(r['speedup_steps'], '>6.2f')} {_fmt(gflops, '>10.1f')} "
            f"{_fmt(r['speedup_flops'], '>6.2f')} {100 * r['scoring_flops_share']:>6.1f} | "
            f"{noisy:>10.3f}"
        )
    lines.append("noisy sel. = share of selected pairs whose caption is wrong (mismatched or junk)")
    return "\n".join(lines)


def plot_curves(runs: dict[str, dict], path: str | Path, title: str = "") -> None:
    """Zero-shot accuracy against steps and against FLOPs (scoring included), one line per
    policy, with uniform's final accuracy as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), width_ratios=(1, 1, 0.8))
    target = runs["uniform"]["final"][METRIC] if "uniform" in runs else None
    for name, run in runs.items():
        steps = [h["step"] for h in run["history"]]
        flops = [h["flops"] / 1e12 for h in run["history"]]
        acc = [h[METRIC] for h in run["history"]]
        axes[0].plot(steps, acc, marker="o", ms=3, label=name)
        axes[1].plot(flops, acc, marker="o", ms=3, label=name)
    for ax, xlabel in zip(axes[:2], ("training steps", "TFLOPs (training + scoring)"), strict=True):
        if target is not None:
            ax.axhline(target, color="grey", ls="--", lw=1, label="uniform final")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("zero-shot top-1 (test)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _flops_bars(axes[2], runs)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
