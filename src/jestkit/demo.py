"""`jestkit demo`: the reference, its cache and several learners on real data, compared.

Trains the reference on the curated set, caches its embeddings of the pool, trains one learner
per policy for the same number of steps from the same initial weights and seed, then writes
out/results.json and out/curves.png and prints the comparison table.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from jestkit.data.captions import PoolConfig, noise_summary
from jestkit.data.prepare import CaptionData, prepare_caption_data
from jestkit.distributed import Distributed
from jestkit.evaluate import evaluate
from jestkit.models.factory import ModelConfig, build_model
from jestkit.reference import ReferenceConfig, load_reference, reference_info, train_reference
from jestkit.report import compare, plot_curves, table
from jestkit.train import TrainConfig, Trainer, write_json_atomic

DEMO_POLICIES = (
    "uniform",
    "learnability-independent",
    "learnability-joint",
    "flexi-learnability-joint",
)


def evaluator(data: CaptionData):
    return lambda model: evaluate(model, data.test, data.test_tokens, data.prompt_tokens)


def train_learner(
    data: CaptionData,
    model_config: ModelConfig,
    config: TrainConfig,
    reference_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    dist: Distributed | None = None,
) -> dict:
    """One learner run, written to out_dir/result.json (and checkpoint.pt as it goes).
    dist: this process's place under torchrun; rank 0 writes the files."""
    dist = dist or Distributed()
    out = Path(out_dir)
    torch.manual_seed(config.seed)  # the same initial weights for every policy of a seed
    model = build_model(model_config, len(data.vocab), config.loss)
    reference = None
    if config.uses_reference and reference_dir is not None:
        reference = load_reference(reference_dir, data, config.loss)
    trainer = Trainer(
        model,
        config,
        data.pool,
        data.pool_tokens,
        reference,
        evaluator(data),
        out,
        progress=progress,
        dist=dist,
    )
    if resume and trainer.resume() and dist.is_main:
        print(f"resumed {config.name()} from {trainer.checkpoint_path} at step {trainer.step}")
    start = time.perf_counter()
    result = trainer.run()
    result["wall_seconds"] = time.perf_counter() - start
    result["model_config"] = asdict(model_config)
    if dist.is_main:
        write_json_atomic(result, out / "result.json")
    return result


def run_demo(
    out_dir: str | os.PathLike = "runs/demo",
    pool_config: PoolConfig | None = None,
    model_config: ModelConfig | None = None,
    reference_config: ReferenceConfig | None = None,
    train_config: TrainConfig | None = None,
    policies: tuple[str, ...] = DEMO_POLICIES,
    data_dir: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    out = Path(out_dir)
    pool_config = pool_config or PoolConfig()
    model_config = model_config or ModelConfig()
    reference_config = reference_config or ReferenceConfig()
    train_config = train_config or TrainConfig()
    if "uniform" not in policies:
        raise ValueError("the demo compares against uniform: include 'uniform' in policies")
    t0 = time.perf_counter()
    data = prepare_caption_data(pool_config, data_dir, limit)
    print(
        f"data: pool {len(data.pool)} pairs ({_noise_text(data)}), curated {len(data.curated)}, "
        f"test {len(data.test)}, vocabulary {len(data.vocab)} words"
    )

    ref_dir = out / "reference"
    ref = train_reference(
        data,
        model_config,
        reference_config,
        train_config.loss,
        ref_dir,
        evaluate=evaluator(data),
        progress=progress,
    )
    print(
        f"reference: zero-shot {ref['final'].get('zero_shot', float('nan')):.4f} after "
        f"{reference_config.steps} steps on the curated set; cache of {len(data.pool)} pool "
        f"pairs built"
    )

    runs = {}
    for name in policies:
        config = replace(train_config, policy=name)
        runs[config.name()] = train_learner(
            data, model_config, config, ref_dir, out / "runs" / config.name(), progress=progress
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
            "pool": asdict(pool_config),
            "model": asdict(model_config),
            "reference": asdict(reference_config),
            "train": asdict(train_config),
            "policies": list(policies),
            "limit": limit,
        },
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json_atomic(results, out / "results.json")
    plot_curves(
        runs,
        out / "curves.png",
        title=f"Fashion-MNIST image-caption, filter ratio {train_config.filter_ratio}",
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
