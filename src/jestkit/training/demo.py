"""`jestkit demo`: the reference, its cache and several learners on real data, compared.

Trains the reference on the curated set, caches its embeddings of the pool, trains one learner
per policy for the same number of steps from the same initial weights and seed, then writes
out/results.json and out/curves.png and prints the comparison table.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

from jestkit.data.captions import PoolConfig, noise_summary
from jestkit.data.prepare import CaptionData, prepare_caption_data
from jestkit.models.factory import ModelConfig
from jestkit.training.checkpoint import write_json_atomic
from jestkit.training.config import DEMO_POLICIES, TrainConfig, TrainingConfig, reference_training
from jestkit.training.evaluate import evaluator
from jestkit.training.learner import train_learner
from jestkit.training.reference import reference_info, train_reference
from jestkit.training.report import compare, plot_curves, table
from jestkit.training.rundir import check_reference_dir, check_run_dir


def run_demo(
    out_dir: str | os.PathLike = "runs/demo",
    data_config: PoolConfig | None = None,
    model_config: ModelConfig | None = None,
    reference_config: TrainingConfig | None = None,
    train_config: TrainConfig | None = None,
    policies: tuple[str, ...] = DEMO_POLICIES,
    progress: bool = True,
    overwrite: bool = False,
    write_config=None,
) -> dict:
    """The demo: the reference (trained with train_config's loss) and one learner per policy
    name (see jestkit.training.config.parse_run_name), compared. A demo already in out_dir (its
    reference or a run) is refused before any work unless overwrite. write_config: called with
    out_dir once checked (the CLI writes config.yaml)."""
    out = Path(out_dir)
    data_config = data_config or PoolConfig()
    model_config = model_config or ModelConfig()
    reference_config = reference_config or reference_training()
    train_config = train_config or TrainConfig()
    if "uniform" not in policies:
        raise ValueError("the demo compares against uniform: include 'uniform' in policies")
    configs = [train_config.with_name(name) for name in policies]  # checks every name first
    for config in configs:
        model_config.check_patch_size(config.scoring.patch_size)
    check_reference_dir(out / "reference", overwrite)
    for config in configs:
        check_run_dir(out / "runs" / config.name(), overwrite=overwrite)
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

    runs = {}
    for config in configs:
        runs[config.name()] = train_learner(
            data,
            model_config,
            config,
            ref_dir,
            out / "runs" / config.name(),
            progress=progress,
            overwrite=overwrite,
        )
        final = runs[config.name()]["final"]
        print(
            f"{config.name()}: zero-shot {final['zero_shot']:.4f} "
            f"({runs[config.name()]['wall_seconds']:.0f} s)"
        )

    rows = compare(runs)
    target = runs["uniform"]["final"]["zero_shot"]
    results = {
        "policies": rows,
        "target_zero_shot": target,
        "reference": reference_info(ref_dir),
        "pool_noise": noise_summary(data.pool.noise),
        "config": {
            "data": asdict(data_config),
            "model": asdict(model_config),
            "reference": asdict(reference_config),
            "train": asdict(train_config),
            "policies": list(policies),
        },
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json_atomic(results, out / "results.json")
    plot_curves(
        runs,
        out / "curves.png",
        title=f"Fashion-MNIST image-caption, filter ratio {train_config.selection.filter_ratio}",
    )
    print()
    print(table(rows, target))
    print(
        f"\nwrote {out / 'results.json'} and {out / 'curves.png'} "
        f"({results['wall_seconds']:.0f} s in all)"
    )
    return results


def _noise_text(data: CaptionData) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in noise_summary(data.pool.noise).items())
