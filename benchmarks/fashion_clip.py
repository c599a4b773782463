"""JEST on real data: every policy at several filter ratios and seeds, on the same budget.

One data set and one reference (trained on the curated set, cached) serve every run. For each
seed, uniform trains once (the filter ratio does not touch it) and every other policy trains at
every filter ratio for the same number of steps from the same initial weights. Reported per
(ratio, policy), mean and spread over seeds: final zero-shot top-1, steps and FLOPs (training +
learner scoring; the reference's training and cache are listed apart, paid once) to reach that
seed's uniform final zero-shot accuracy, their ratios to uniform's, the share of FLOPs spent
scoring, and for Flexi-JEST the cut in scoring FLOPs against full-resolution scoring.

    python benchmarks/fashion_clip.py                       # the full grid: hours on 2 cores
    python benchmarks/fashion_clip.py --ratios 0.8 --policies uniform learnability-joint \
        flexi-learnability-joint --steps 300                # issue 4's comparison

Writes benchmarks/results/fashion_clip.json (every run's history too) and fashion_clip.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from jestkit.core import SelectionConfig
from jestkit.data.captions import PoolConfig
from jestkit.data.prepare import prepare_caption_data
from jestkit.models.factory import ModelConfig
from jestkit.training.config import TrainConfig, TrainingConfig, reference_training, run_names
from jestkit.training.evaluate import evaluator
from jestkit.training.learner import train_learner
from jestkit.training.reference import reference_info, train_reference
from jestkit.training.report import compare

ALL_POLICIES = [
    "uniform",
    "hard_learner-independent",
    "hard_learner-joint",
    "easy_reference-independent",
    "easy_reference-joint",
    "learnability-independent",
    "learnability-joint",
    "flexi-learnability-joint",
]


def _spread(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(got) if got else None,
        "std": statistics.stdev(got) if len(got) > 1 else 0.0 if got else None,
        "n": len(got),
        "of": len(values),
        "values": values,
    }


def _fmt(s: dict, spec: str = ".2f") -> str:
    if s["mean"] is None:
        return f"never (0/{s['of']})"
    text = f"{s['mean']:{spec}} ± {s['std']:{spec}}"
    return text if s["n"] == s["of"] else f"{text} ({s['n']}/{s['of']})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.8, 0.9])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--policies", nargs="+", default=ALL_POLICIES, choices=run_names())
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--loss", default="sigmoid", choices=("sigmoid", "softmax"))
    p.add_argument("--reference-steps", type=int, default=reference_training().steps)
    p.add_argument("--limit", type=int, default=None, help="first LIMIT train/test images only")
    p.add_argument("--work", default="runs/fashion_clip", help="reference and run folders")
    p.add_argument("--out", default="benchmarks/results/fashion_clip.json")
    args = p.parse_args()
    if "uniform" not in args.policies:
        sys.exit("--policies must include uniform, the baseline")

    t0 = time.perf_counter()
    pool_config, model_config = PoolConfig(), ModelConfig()
    ref_config = replace(reference_training(), steps=args.reference_steps)
    base = TrainConfig(
        selection=SelectionConfig(loss=args.loss),
        training=TrainingConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            eval_every=args.eval_every,
            checkpoint_every=args.steps,
        ),
    )

    def learner(name: str, seed: int, ratio: float | None = None) -> TrainConfig:
        config = replace(base, training=replace(base.training, seed=seed))
        if ratio is not None:
            config = replace(config, selection=replace(config.selection, filter_ratio=ratio))
        return config.with_name(name)

    data = prepare_caption_data(replace(pool_config, limit=args.limit))
    work = Path(args.work)
    train_reference(
        data, model_config, ref_config, args.loss, work / "reference", evaluate=evaluator(data),
        overwrite=True,  # a rerun retrains everything
    )
    ref = reference_info(work / "reference")

    runs: dict[str, dict] = {}  # key: "ratio/seed/policy"
    for seed in args.seeds:
        uniform = train_learner(
            data,
            model_config,
            learner("uniform", seed),
            work / "reference",
            work / f"seed{seed}" / "uniform",
            overwrite=True,
        )
        for ratio in args.ratios:
            runs[f"{ratio}/{seed}/uniform"] = uniform
            for name in args.policies:
                if name == "uniform":
                    continue
                config = learner(name, seed, ratio)
                out = work / f"seed{seed}" / f"{ratio}" / config.name()
                runs[f"{ratio}/{seed}/{config.name()}"] = train_learner(
                    data, model_config, config, work / "reference", out, overwrite=True
                )

    rows = []
    for ratio in args.ratios:
        per_seed = {
            seed: compare({n: runs[f"{ratio}/{seed}/{n}"] for n in args.policies})
            for seed in args.seeds
        }
        full_score = {s: runs.get(f"{ratio}/{s}/learnability-joint") for s in args.seeds}
        for name in args.policies:
            r = [per_seed[s][name] for s in args.seeds]
            row = {
                "filter_ratio": ratio,
                "policy": name,
                "final_zero_shot": _spread([x["final_zero_shot"] for x in r]),
                "steps_to_target": _spread([x["steps_to_target"] for x in r]),
                "flops_to_target": _spread([x["flops_to_target"] for x in r]),
                "speedup_steps": _spread([x["speedup_steps"] for x in r]),
                "speedup_flops": _spread([x["speedup_flops"] for x in r]),
                "scoring_flops_share": _spread([x["scoring_flops_share"] for x in r]),
                "selected_noisy": _spread(
                    [
                        x["selected_noise_fraction"]["mismatched"]
                        + x["selected_noise_fraction"]["junk"]
                        for x in r
                    ]
                ),
            }
            if name.startswith("flexi-") and all(full_score.values()):
                cut = [
                    1
                    - runs[f"{ratio}/{s}/{name}"]["flops_per_step"]["learner_score"]
                    / full_score[s]["flops_per_step"]["learner_score"]
                    for s in args.seeds
                ]
                row["scoring_flops_cut_vs_full_resolution"] = _spread(cut)
            rows.append(row)

    result = {
        "config": {
            "args": vars(args),
            "pool": asdict(pool_config),
            "model": asdict(model_config),
            "reference": asdict(ref_config),
            "train": asdict(base),
        },
        "reference": {k: ref[k] for k in ("train_flops", "cache_flops", "final")},
        "rows": rows,
        "runs": {
            k: {"history": v["history"], "flops": v["flops"], "final": v["final"]}
            for k, v in runs.items()
        },
        "wall_seconds": time.perf_counter() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    _plot(runs, args, Path(args.out).with_suffix(".png"))

    print(
        f"reference: {ref['train_flops'] / 1e12:.2f} TFLOPs to train, "
        f"{ref['cache_flops'] / 1e12:.2f} TFLOPs to cache (paid once, not in the runs below); "
        f"its zero-shot {ref['final'].get('zero_shot', float('nan')):.4f}"
    )
    head = (
        f"{'ratio':>5} {'policy':<27} {'final zero-shot':>17} {'× fewer steps':>18} "
        f"{'× fewer FLOPs':>18} {'scoring share':>15} {'noisy selected':>16}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['filter_ratio']:>5} {r['policy']:<27} {_fmt(r['final_zero_shot'], '.4f'):>17} "
            f"{_fmt(r['speedup_steps']):>18} {_fmt(r['speedup_flops']):>18} "
            f"{_fmt(r['scoring_flops_share']):>15} {_fmt(r['selected_noisy'], '.3f'):>16}"
        )
        if "scoring_flops_cut_vs_full_resolution" in r:
            print(
                f"{'':>5} {'':<27} scoring FLOPs cut vs full resolution: "
                f"{_fmt(r['scoring_flops_cut_vs_full_resolution'], '.3f')}"
            )
    print(
        f"\n× = uniform's steps (FLOPs) to reach its own final zero-shot accuracy divided by the "
        f"policy's; mean ± std over seeds {args.seeds}, (n/N) where only n seeds reached it."
    )
    print(f"wrote {args.out} ({result['wall_seconds'] / 60:.0f} min)")


def _plot(runs: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(args.ratios), 2, figsize=(11, 3.6 * len(args.ratios)), squeeze=False
    )
    for i, ratio in enumerate(args.ratios):
        for name in args.policies:
            hist = [runs[f"{ratio}/{s}/{name}"]["history"] for s in args.seeds]
            steps = [h["step"] for h in hist[0]]
            acc = [statistics.fmean(h[k]["zero_shot"] for h in hist) for k in range(len(steps))]
            flops = [
                statistics.fmean(h[k]["flops"] for h in hist) / 1e12 for k in range(len(steps))
            ]
            axes[i][0].plot(steps, acc, marker="o", ms=2, label=name)
            axes[i][1].plot(flops, acc, marker="o", ms=2, label=name)
        for ax, xlabel in zip(axes[i], ("steps", "TFLOPs (training + scoring)"), strict=True):
            ax.set_title(f"filter ratio {ratio} (mean of seeds {args.seeds})", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("zero-shot top-1")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
