"""One learner run as a plain function: the data, the model and reference, the loop, result.json."""

from __future__ import annotations

import os
from dataclasses import asdict

import torch

from jestkit.dropin.distributed import Distributed
from jestkit.engine.config import TrainConfig
from jestkit.engine.loop import Trainer
from jestkit.engine.record import run_and_record
from jestkit.engine.rundir import claimed_run
from jestkit.fashion.evaluate import evaluator
from jestkit.fashion.prepare import CaptionData
from jestkit.fashion.reference import load_reference
from jestkit.models.factory import ModelConfig, build_model


def train_learner(
    data: CaptionData,
    model_config: ModelConfig,
    config: TrainConfig,
    reference_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    dist: Distributed | None = None,
    overwrite: bool = False,
    write_config=None,
    report_to: tuple[str, ...] = ("jsonl",),
) -> dict:
    """Train one learner on data.pool, evaluated on data.test; returns the result dict, also
    written to out_dir/result.json (checkpoint.pt as it goes): per-evaluation 'history' (step,
    flops by kind, zero_shot, i2t_r1, t2i_r1), 'flops' by kind, 'flops_per_step', 'final',
    'selected_noise_fraction', 'wall_seconds' and 'train_seconds' (wall time without the
    evaluations: scoring, selection and training). reference_dir: a folder written by
    train_reference (needed by the policies that read the reference). dist: this process's
    place under torchrun; rank 0 writes the files.

    out_dir (jestkit.engine.rundir): checked before any work and locked for the run's
    lifetime. A folder already holding a run is refused unless `resume` (continue exactly:
    every setting, the model, the data and the reference must be the same) or `overwrite`
    (delete its checkpoint and results, then start afresh); `resume` without a checkpoint is
    refused. write_config: called with OUT once every check passed (the CLI writes config.yaml).
    report_to: where the metrics go as the run goes (jestkit.engine.reports)."""
    dist = dist or Distributed()
    with claimed_run(out_dir, resume, overwrite, dist.is_main) as out:
        return _train(data, model_config, config, reference_dir, out, resume, progress, dist,
                      write_config, report_to)  # fmt: skip


def _train(data, model_config, config, reference_dir, out, resume, progress, dist,
           write_config, report_to) -> dict:  # fmt: skip
    torch.manual_seed(config.training.seed)  # the same initial weights for every policy of a seed
    model = build_model(model_config, len(data.vocab), config.selection.loss)
    reference, reference_fingerprint = None, None
    if config.policy.uses_reference and reference_dir is not None:
        reference = load_reference(reference_dir, data, config.selection.loss)
        reference_fingerprint = reference.cache.meta.model_fingerprint
    run_info = {
        "model": asdict(model_config),
        "data_fingerprint": data.fingerprint,
        "kept_fingerprint": data.kept_fingerprint(),
        "reference_fingerprint": reference_fingerprint,
    }
    trainer = Trainer(
        model,
        config,
        data.pool_source(),
        reference,
        evaluator(data),
        out,
        progress=progress,
        dist=dist,
        run_info=run_info,
        report_to=report_to,
    )
    return run_and_record(trainer, resume, out, lambda: {"model_config": asdict(model_config)},
                          write_config)  # fmt: skip


