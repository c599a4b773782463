"""The curves picture of a run on your own data (OUT/curves.png): its held-out metrics against
training steps and against total FLOPs (training + scoring), one line per set and metric, read
from result.json's history."""

from __future__ import annotations

from pathlib import Path

from jestkit.engine.files import atomic_file

# the metrics drawn: each set's headline ones (the rest are in result.json)
DRAWN = ("acc1", "mean_per_class_recall", "image_retrieval_recall@1", "text_retrieval_recall@1",
         "mean_recall@1")  # fmt: skip
_NOT_METRICS = ("step", "flops", "train", "learner_score", "reference_score")


def drawn_metrics(history: list[dict]) -> list[str]:
    """The NAME/metric keys of the history that the picture draws."""
    keys = [k for k in history[0] if k not in _NOT_METRICS] if history else []
    return [k for k in keys if k.rpartition("/")[2] in DRAWN]


def plot_history(history: list[dict], path: str | Path, title: str = "") -> None:
    """Held-out metrics against steps and total FLOPs (log), one line per NAME/metric."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = drawn_metrics(history)
    if not keys:
        raise ValueError("the history holds no held-out metrics to draw")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path) as f:  # never through a symlink, never half a file
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
