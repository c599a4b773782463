"""One learner run as a plain function: the data, the model and reference, the loop, result.json."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from jestkit.data.prepare import CaptionData
from jestkit.dropin.distributed import Distributed
from jestkit.models.factory import ModelConfig, build_model
from jestkit.training.checkpoint import write_json_atomic
from jestkit.training.config import TrainConfig
from jestkit.training.evaluate import evaluator
from jestkit.training.loop import Trainer
from jestkit.training.reference import load_reference


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
    """Train one learner on data.pool, evaluated on data.test; returns the result dict, also
    written to out_dir/result.json (checkpoint.pt as it goes): per-evaluation 'history' (step,
    flops by kind, zero_shot, i2t_r1, t2i_r1), 'flops' by kind, 'flops_per_step', 'final',
    'selected_noise_fraction', 'wall_seconds' and 'train_seconds' (wall time without the
    evaluations: scoring, selection and training). reference_dir: a folder written by
    train_reference (needed by the policies that read the reference). dist: this process's
    place under torchrun; rank 0 writes the files."""
    dist = dist or Distributed()
    out = Path(out_dir)
    torch.manual_seed(config.training.seed)  # the same initial weights for every policy of a seed
    model = build_model(model_config, len(data.vocab), config.selection.loss)
    reference = None
    if config.policy.uses_reference and reference_dir is not None:
        reference = load_reference(reference_dir, data, config.selection.loss)
    trainer = Trainer(
        model,
        config,
        data.pool_source(),
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
    result["train_seconds"] = result["wall_seconds"] - result["eval_seconds"]
    result["model_config"] = asdict(model_config)
    if dist.is_main:
        write_json_atomic(result, out / "result.json")
    return result
