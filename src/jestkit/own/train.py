"""`jestkit train` on your own data and model: the run's pieces (jestkit.own.run, chosen by the
CLI's flags), then the same Trainer (jestkit.engine.loop) as the Fashion-MNIST job.

With --device cuda the model and every batch live on the GPU; on a GPU with bfloat16 the
training forward pass and the learner's scoring run under bf16 autocast.

Evaluation: on the Fashion-MNIST source, its test set (zero-shot, retrieval); on your own data,
the held-out sets of --eval.* (jestkit.own.evaluate: clip_benchmark's sets and metrics), loaded,
checked and checked held out from the training shards before training, evaluated every
training.eval_every steps and at the end. result.json records them in its history (NAME/metric),
with the training loss of every step, the FLOPs and the bad samples skipped, and OUT/curves.png
draws them against steps and FLOPs.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict
from pathlib import Path

from jestkit.dropin.distributed import Distributed, agreed
from jestkit.engine.config import TrainConfig
from jestkit.engine.device import bf16_autocast, resolve_device
from jestkit.engine.loop import Trainer
from jestkit.engine.record import run_and_record
from jestkit.models.factory import ModelConfig
from jestkit.own.curves import plot_run
from jestkit.own.evaluate import EvalConfig, Evaluator, check_held_out, load_sets
from jestkit.own.run import (
    OwnRun,
    build_learner,
    build_source,
    load_any_reference,
    reference_fingerprint,
    resolved_draft_side,
)


def _on_cpu(evaluate):
    """Fashion-MNIST's evaluation on a CPU float32 copy of a model trained elsewhere."""
    return lambda model: evaluate(copy.deepcopy(model).float().cpu())


def train_own(
    run: OwnRun,
    model_config: ModelConfig,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    data=None,
    resume: bool = False,
    progress: bool = True,
    dist: Distributed | None = None,
    write_config=None,
    eval_config: EvalConfig | None = None,
    settings: dict | None = None,
    report_to: tuple[str, ...] = ("jsonl",),
) -> dict:
    """One learner run on the data, model, reference and device of `run`; data: the prepared
    Fashion-MNIST captions when run.shards.pattern is None. Writes OUT/checkpoint.pt as it goes
    and OUT/result.json (train_learner's keys, plus 'losses', 'data', 'model', 'device',
    'skipped': the bad samples skipped, by reason, over every rank; on shards 'streams',
    'workers', 'ranks'). write_config(OUT): called once every check passed (the CLI writes
    config.yaml); eval_config: held-out sets on shards. settings: the command line's settings
    (flag -> value), compared over the ranks at start-up with the shards' names and sizes and the
    reference's fingerprint (jestkit.dropin.distributed.agree): a rank started otherwise, or
    failing a start-up check alone, stops every rank with one message. report_to: where the
    metrics go as the run goes (jestkit.engine.reports). An open_clip learner's checkpoints
    record its config, and the run ends by writing OUT/open_clip_model.pt, the model in
    open_clip's checkpoint layout (jestkit.openclip.export)."""
    dist = dist or Distributed()
    device = resolve_device(run.own.device)
    loss = config.selection.loss
    with agreed(dist, settings) as shared:  # every rank checks alike, or all stop (no collective)
        if run.shards.pattern is None:
            if run.shards.draft_side != "none":
                raise ValueError("--shards.draft_side drafts the JPEG candidates of your own "
                                 "shards (--shards.pattern); Fashion-MNIST is held decoded")
            if data is None:
                raise ValueError("no data: give --shards.pattern, or the Fashion-MNIST captions")
            if run.own.open_clip is not None:
                raise ValueError(
                    "an open_clip model trains on image-caption shards (--shards.pattern): the "
                    "Fashion-MNIST source is tokenised for jestkit's own text tower"
                )
        eval_config = eval_config or EvalConfig()
        if eval_config.any and run.shards.pattern is None:
            raise ValueError("--eval.zeroshot / --eval.retrieval evaluate a run on your own shards "
                             "(--shards.pattern); Fashion-MNIST runs evaluate on its test set")
        sets = load_sets(eval_config)  # checked before any model is built
        check_held_out(sets, run.shards.shards() if sets else [], eval_config.overlap,
                       progress and dist.is_main)  # fmt: skip
        vocab = None if data is None or run.shards.pattern else len(data.vocab)
        model = build_learner(run, model_config, loss, vocab, config.training.seed).to(device)
        model.check_view(config.scoring.view(), config.scoring.multires_fraction)  # before records
        if run.shards.pattern:
            draft = resolved_draft_side(run, model, model_config, config)
            source = build_source(run, model, dist, config.training.checkpoint_every, draft)
            shared["the shards' files (name:size)"] = [
                f"{Path(p).name}:{os.path.getsize(p)}" for p in source.shards]
            source.check(config.super_batch_size())  # B splits over the ranks and streams
            evaluate = None
            if sets:
                evaluate = Evaluator(sets, source.transform, source.tokenize,
                                     eval_config.batch_size)  # fmt: skip
        else:
            from jestkit.fashion.evaluate import evaluator

            source = data.pool_source()
            evaluate = evaluator(data) if device.type == "cpu" else _on_cpu(evaluator(data))
        reference = None
        if config.policy.uses_reference:
            reference = load_any_reference(run, loss, model, data, source, device)
        out = Path(out_dir)
        run_info = {"model": run.own.open_clip or asdict(model_config),  # compared on resume
                    "reference_fingerprint": reference_fingerprint(reference),
                    **({"data_fingerprint": data.fingerprint} if data is not None else {})}
        shared["the reference (its fingerprint)"] = run_info["reference_fingerprint"]
    export = None
    if run.own.open_clip is not None:
        from jestkit.openclip.export import open_clip_record
        from jestkit.openclip.model import read_config

        record = open_clip_record(run.own.open_clip, read_config(run.own.open_clip))
        export = lambda: record  # noqa: E731
    trainer = Trainer(model, config, source, reference, evaluate, out, progress=progress,
                      dist=dist, autocast=bf16_autocast(device), run_info=run_info,
                      report_to=report_to, export=export)  # fmt: skip
    try:
        result = run_and_record(trainer, resume, out, lambda: {
            "model_config": asdict(model_config),
            "data": run.shards.pattern or "fashion-mnist",
            "model": run.own.open_clip or "jestkit",
            **({"vocab_size": run.shards.vocab_size} if run.shards.pattern else {}),
            "device": str(device),
            "bf16": trainer.autocast,
            "skipped": source.all_skipped() if hasattr(source, "all_skipped") else {},
            **({"streams": source.plan.streams, "workers": source.workers,
                "ranks": dist.world_size, "draft_side": source.config.draft_side}
               if hasattr(source, "plan") else {}),
            **({"eval_sets": {s.name: {"kind": s.kind, "samples": len(s)} for s in sets}}
               if sets else {}),
        }, write_config)  # fmt: skip
    finally:
        if hasattr(source, "close"):
            source.close()
    if dist.is_main and export is not None:
        from jestkit.openclip.export import export_open_clip

        export_open_clip(out)
    if run.shards.pattern and dist.is_main and result["losses"]:
        plot_run(result["losses"], result["history"], out / "curves.png",
                 title=f"{config.name()} on {run.shards.pattern}"[:120])  # fmt: skip
    return result


__all__ = ["train_own"]
