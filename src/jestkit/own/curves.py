"""The curves picture of a run on your own data (OUT/curves.png): its training loss against
steps (every step, and a running mean over 1/20 of the run), and its held-out metrics against
training steps and against total FLOPs (training + scoring), one line per set and metric, read
from result.json's losses and history."""

from __future__ import annotations

from pathlib import Path

from jestkit.engine.files import save_png

# the metrics drawn: each set's headline ones (the rest are in result.json)
DRAWN = ("acc1", "mean_per_class_recall", "image_retrieval_recall@1", "text_retrieval_recall@1",
         "mean_recall@1")  # fmt: skip
_NOT_METRICS = ("step", "flops", "train", "learner_score", "reference_score")


def drawn_metrics(history: list[dict]) -> list[str]:
    """The NAME/metric keys of the history that the picture draws."""
    keys = [k for k in history[0] if k not in _NOT_METRICS] if history else []
    return [k for k in keys if k.rpartition("/")[2] in DRAWN]


def plot_run(losses: list[float], history: list[dict], path: str | Path, title: str = "") -> None:
    """The training loss against steps; with held-out metrics in the history, also those
    against steps and total FLOPs (log), one line per NAME/metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not losses:
        raise ValueError("no training loss to draw")
    keys = drawn_metrics(history)
    fig, axes = plt.subplots(1, 3 if keys else 1, figsize=(17, 4.4) if keys else (6, 4.4))
    loss_ax = axes[0] if keys else axes
    steps = range(1, len(losses) + 1)
    loss_ax.plot(steps, losses, color="0.7", lw=0.8, label="loss (each step)")
    window = max(1, len(losses) // 20)
    if window > 1:
        running = [sum(losses[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
                   for i in range(len(losses))]  # fmt: skip
        loss_ax.plot(steps, running, color="C0", label=f"running mean ({window} steps)")
    loss_ax.set_xlabel("training steps")
    loss_ax.set_ylabel("training loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    if keys:
        _plot_metrics(history, keys, axes[1:])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def _plot_metrics(history: list[dict], keys: list[str], axes) -> None:
    """Held-out metrics against steps (axes[0]) and total FLOPs, log (axes[1])."""
    import matplotlib.ticker

    axes[1].sharey(axes[0])
    sets = list(dict.fromkeys(k.rpartition("/")[0] for k in keys))
    for key in keys:
        name, _, metric = key.rpartition("/")
        style = {"color": f"C{sets.index(name)}", "ls": ("-", "--", ":", "-.", "-")[
            DRAWN.index(metric)], "marker": "os^vd"[DRAWN.index(metric)]}  # fmt: skip
        for ax, x in ((axes[0], "step"), (axes[1], "flops")):
            points = [(h[x] / (1e12 if x == "flops" else 1), h[key]) for h in history
                      if x == "step" or h[x] > 0]  # fmt: skip
            ax.plot(*zip(*points, strict=True), ms=3, label=key, **style)
    axes[0].set_xlabel("training steps")
    axes[1].set_xlabel("total TFLOPs (training + scoring), log")
    axes[1].set_xscale("log")
    axes[1].xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    axes[1].xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_ylabel("held-out metric")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
