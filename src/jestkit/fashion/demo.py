"""`jestkit demo`: the reference, its cache and several learners on real data, compared.

Trains the reference on the curated set and caches its embeddings of the pool; trains uniform at
several budgets (multiples of training.steps, each run with its own schedule: uniform's
frontier), one learner per policy for training.steps, and the offline-filter baseline (uniform
for training.steps on the share of the pool the reference scores highest, DataComp's CLIP-score
filter: what a user with a reference would do instead of JEST), all from the same initial
weights and seed; reads each policy's speed-up in steps, FLOPs and training time off uniform's
frontier (jestkit.payoff.report); writes out/results.json and out/curves.png and prints the table.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from jestkit.engine.config import (
    DEMO_POLICIES,
    FILTER_KEEP,
    UNIFORM_BUDGETS,
    TrainConfig,
    TrainingConfig,
    reference_training,
)
from jestkit.engine.files import write_json_atomic
from jestkit.engine.rundir import check_demo_dir, check_reference_dir, check_run_dir, clear_demo
from jestkit.fashion.captions import PoolConfig, noise_summary
from jestkit.fashion.evaluate import evaluator
from jestkit.fashion.learner import train_learner
from jestkit.fashion.prepare import CaptionData, prepare_caption_data
from jestkit.fashion.reference import filter_pool, reference_info, train_reference
from jestkit.models.factory import ModelConfig
from jestkit.payoff.report import compare, plot, run_cost, table, verdict


def run_demo(
    out_dir: str | os.PathLike = "runs/demo",
    data_config: PoolConfig | None = None,
    model_config: ModelConfig | None = None,
    reference_config: TrainingConfig | None = None,
    train_config: TrainConfig | None = None,
    policies: tuple[str, ...] = DEMO_POLICIES,
    uniform_budgets: tuple[float, ...] = UNIFORM_BUDGETS,
    progress: bool = True,
    overwrite: bool = False,
    write_config=None,
    filter_keep: float | None = FILTER_KEEP,
) -> dict:
    """The demo: the reference (trained with train_config's loss), uniform at each budget
    (a multiple of train_config.training.steps) and one learner per policy name (see
    jestkit.engine.config.parse_run_name) and the offline filter 'filter-K' (uniform on the
    share filter_keep of the pool the reference scores highest; None: none), compared on
    uniform's frontier. A demo already in
    out_dir (its reference or a run) is refused before any work unless overwrite (which also
    deletes its results.json and curves.png); a folder holding anything but a demo is refused.
    write_config: called with out_dir once checked (the CLI writes config.yaml)."""
    out = Path(out_dir)
    data_config = data_config or PoolConfig()
    model_config = model_config or ModelConfig()
    reference_config = reference_config or reference_training()
    train_config = train_config or TrainConfig()
    configs = demo_configs(train_config, policies, uniform_budgets, filter_keep)  # checks first
    for config in configs.values():
        model_config.check_patch_size(config.scoring.patch_size)
    check_demo_dir(out)
    check_reference_dir(out / "reference", overwrite)
    for name in configs:
        check_run_dir(out / "runs" / name, overwrite=overwrite)
    if overwrite:
        clear_demo(out)  # the old demo's results never stand beside the new runs
    if write_config is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out)
    t0 = time.perf_counter()
    data = prepare_caption_data(data_config)
    print(
        f"data: pool {len(data.pool)} pairs ({_noise_text(data)}), curated {len(data.curated)}, "
        f"test {len(data.test)}, vocabulary {len(data.vocab)} words"
    )

    ref_dir = out / "reference"
    ref = train_reference(
        data,
        model_config,
        reference_config,
        train_config.selection.loss,
        ref_dir,
        evaluate=evaluator(data),
        progress=progress,
        overwrite=overwrite,
    )
    print(
        f"reference: zero-shot {ref['final'].get('zero_shot', float('nan')):.4f} after "
        f"{reference_config.steps} steps on the curated set; cache of {len(data.pool)} pool "
        f"pairs built"
    )

    filtered = None if filter_keep is None else filter_pool(
        data, ref_dir, filter_keep, train_config.selection.loss
    )
    runs = {}
    for name, config in configs.items():
        runs[name] = train_learner(
            filtered if name == filter_name(filter_keep) else data,
            model_config,
            config,
            ref_dir,
            out / "runs" / name,
            progress=progress,
            overwrite=overwrite,
        )
        print(
            f"{name}: zero-shot {runs[name]['final']['zero_shot']:.4f} "
            f"({runs[name]['wall_seconds']:.0f} s)"
        )

    uniform = [r for name, r in runs.items() if name.startswith("uniform-")]
    policy_runs = {name: r for name, r in runs.items() if not name.startswith("uniform-")}
    rows = compare(uniform, policy_runs)
    results = {
        "policies": rows,
        "uniform": [
            {"steps": r["steps"], "final": r["final"], "total_flops": run_cost(r, "flops"),
             "train_seconds": r["train_seconds"]}
            for r in uniform
        ],  # fmt: skip
        "reference": reference_info(ref_dir),
        "pool_noise": noise_summary(data.pool.noise),
        "config": {
            "data": asdict(data_config),
            "model": asdict(model_config),
            "reference": asdict(reference_config),
            "train": asdict(train_config),
            "policies": list(policies),
            "uniform_budgets": list(uniform_budgets),
        },
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json_atomic(results, out / "results.json")
    plot(
        uniform,
        policy_runs,
        out / "curves.png",
        title=f"Fashion-MNIST image-caption, filter ratio {train_config.selection.filter_ratio}",
    )
    print()
    print(table(uniform, rows))
    print(verdict(rows))
    print(
        f"The reference: {ref['train_flops'] / 1e12:.2f} TFLOPs of training and "
        f"{ref['cache_flops'] / 1e12:.2f} TFLOPs for its pass over the pool, paid once by every "
        f"run that reads it (the policies and filter-K) and in none of the FLOPs above."
    )
    print(
        f"\nwrote {out / 'results.json'} and {out / 'curves.png'} "
        f"({results['wall_seconds']:.0f} s in all)"
    )
    return results


def filter_name(keep: float | None) -> str | None:
    """The offline filter's run name: 'filter-30' keeps 30 %."""
    return None if keep is None else f"filter-{100 * keep:g}"


def demo_configs(
    train_config: TrainConfig,
    policies: tuple[str, ...],
    uniform_budgets: tuple[float, ...],
    filter_keep: float | None = None,
) -> dict[str, TrainConfig]:
    """Every run of the demo by its name: 'uniform-N' for each of uniform's budgets (N steps,
    its own schedule, evaluated at the end only), then each policy at training.steps, then the
    offline filter (uniform at training.steps) when filter_keep is given."""
    if filter_keep is not None and (
        not isinstance(filter_keep, int | float) or not 0.0 < filter_keep < 1.0
    ):
        raise ValueError(f"filter_keep must be None or in (0, 1), got {filter_keep!r}")
    if not policies:
        raise ValueError("policies is empty: the demo compares selecting policies with uniform's "
                         f"frontier; name at least one (e.g. {', '.join(DEMO_POLICIES)})")
    if "uniform" in policies:
        raise ValueError("uniform is the demo's baseline frontier: set its budgets with "
                         "uniform_budgets, and list only selecting policies")  # fmt: skip
    if not uniform_budgets or any(not m > 0 for m in uniform_budgets):
        raise ValueError(f"uniform_budgets must be positive multiples, got {uniform_budgets}")
    steps = train_config.training.steps
    configs = {}
    for multiple in sorted(uniform_budgets):
        n = max(1, round(multiple * steps))
        training = replace(train_config.training, steps=n, eval_every=None,
                           checkpoint_every=n)  # fmt: skip
        configs[f"uniform-{n}"] = replace(train_config.with_name("uniform"), training=training)
    if len(configs) < len(uniform_budgets):
        raise ValueError(f"uniform_budgets {uniform_budgets} give the same step count twice")
    for name in policies:
        configs[name] = train_config.with_name(name)
    if filter_keep is not None:
        configs[filter_name(filter_keep)] = train_config.with_name("uniform")
    return configs


def _noise_text(data: CaptionData) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in noise_summary(data.pool.noise).items())
