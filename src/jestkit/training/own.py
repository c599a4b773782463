"""`jestkit train` on your own data and model: the pieces the loop needs, chosen by the CLI's
flags, then the same Trainer (jestkit.training.loop) as the Fashion-MNIST job.

    data       --shards.pattern: WebDataset tar / Parquet shards streamed by ShardPool
               (jestkit.data.stream.StreamSource); none: the Fashion-MNIST captions (--data.*)
    model      --open_clip NAME|JSON: an open_clip config (jestkit.models.openclip.OpenClipDual,
               its own image preprocessing and tokenizer); none: jestkit's dual encoder (--model.*:
               grayscale 28 x 28 images and hashed word ids on shards)
    reference  --reference PATH: a reference folder (reference.json + cache/, by `jestkit
               reference` for Fashion-MNIST or `jestkit score` for shards), or an open_clip
               checkpoint file (the reference model then runs in the loop on every super-batch,
               its FLOPs counted as reference scoring; --reference_model names its config when it
               is not the learner's)
    device     --device cpu|cuda: the model and every batch there; on a GPU with bfloat16 the
               training forward pass and the learner's scoring run under bf16 autocast

Evaluation: Fashion-MNIST's test set (zero-shot, retrieval) applies only to the Fashion-MNIST
source; on your own data there is no evaluation, and result.json records the training loss of
every step, the FLOPs and the bad samples skipped.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from jestkit.data.stream import HashedWords, ShardsConfig, StreamSource, grayscale
from jestkit.dropin.distributed import Distributed
from jestkit.models.factory import ModelConfig, build_model
from jestkit.training.checkpoint import is_checkpoint, load_checkpoint
from jestkit.training.config import TrainConfig
from jestkit.training.learner import run_and_record
from jestkit.training.loop import Trainer
from jestkit.training.reference import ModelReference, load_reference

OUR_IMAGE_SIZE = 28  # jestkit's ViT (jestkit.models.vit.ViTConfig) sees 28 x 28 grayscale


@dataclass
class OwnModel:
    """Your own model, reference and device (`jestkit train`).

    Attributes:
        open_clip: an open_clip model config: a name open_clip knows (built-in, or registered
            with open_clip.add_model_config) or a JSON config file; None: jestkit's dual encoder
            (--model.*)
        reference: a reference folder (reference.json + cache/) or an open_clip checkpoint file;
            None: --reference_dir
        reference_model: the open_clip config of a reference checkpoint (default: --open_clip)
        device: where the model trains: cpu, or cuda (under torchrun: cuda:LOCAL_RANK, NCCL)
    """

    open_clip: str | None = None
    reference: str | None = None
    reference_model: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"


@dataclass
class OwnRun:
    """The choices that make a run `own` (see the module docstring)."""

    shards: ShardsConfig = field(default_factory=ShardsConfig)
    own: OwnModel = field(default_factory=OwnModel)

    @property
    def is_own(self) -> bool:
        o = self.own
        return bool(self.shards.pattern or o.open_clip or o.reference or o.device != "cpu")


def resolve_device(name: str) -> torch.device:
    """cpu, or this process's GPU (cuda:LOCAL_RANK under torchrun); a clear error without CUDA."""
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise ValueError(
            f"--device cuda, but CUDA is not available (torch {torch.__version__} is {build}, "
            f"{torch.cuda.device_count()} GPUs visible); use --device cpu"
        )
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def bf16_autocast(device: torch.device) -> bool:
    """Whether training runs under bfloat16 autocast: on a GPU that supports bfloat16."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def open_clip_reference_file(spec: str, checkpoint: str | os.PathLike):
    """A frozen open_clip reference from an open_clip checkpoint file or from the checkpoint.pt
    of a `jestkit train` run of an open_clip learner (e.g. uniform on your curated shards)."""
    from jestkit.models.openclip import open_clip_reference

    path = Path(checkpoint)
    if path.suffix == ".pt" and path.is_file() and is_checkpoint(path):  # jestkit's
        return open_clip_reference(spec, state_dict=load_checkpoint(path)["model"])
    return open_clip_reference(spec, checkpoint)


def _open_clip_reference(spec: str, checkpoint: str, learner_spec: str | None, learner):
    reference = open_clip_reference_file(spec, checkpoint)
    if learner_spec is not None and spec != learner_spec:
        import open_clip

        mine = open_clip.get_model_preprocess_cfg(learner.model)
        theirs = open_clip.get_model_preprocess_cfg(reference.model)
        ctx = [getattr(m.model, "context_length", None) for m in (learner, reference)]
        if mine != theirs or ctx[0] != ctx[1]:
            raise ValueError(
                f"the reference {spec!r} takes other inputs than the learner {learner_spec!r} "
                f"(preprocessing {theirs} vs {mine}, context length {ctx[1]} vs {ctx[0]}): both "
                "score the same tensors, so their image preprocessing and tokenizer must match"
            )
    return reference


def load_any_reference(run: OwnRun, reference_dir: str, loss: str, learner: nn.Module,
                       data=None, source=None, device: torch.device | None = None):  # fmt: skip
    """The reference: cached embeddings by id (a folder), or a frozen open_clip model (a
    file). Its loss must be the run's."""
    path = Path(run.own.reference or reference_dir)
    if path.is_file():
        spec = run.own.reference_model or run.own.open_clip
        if spec is None:
            raise ValueError(
                f"--reference {path} is a checkpoint file: name its open_clip config with "
                "--reference_model (or --open_clip for the learner's)"
            )
        reference = _open_clip_reference(spec, str(path), run.own.open_clip, learner)
        if reference.loss_name != loss:
            raise ValueError(
                f"the reference {spec!r} is a {reference.loss_name} model, this run selects with "
                f"loss={loss!r}"
            )
        return ModelReference(reference.to(device or "cpu"))
    if run.shards.pattern:
        from jestkit.training.score import load_stream_reference

        return load_stream_reference(path, source, loss)
    return load_reference(path, data, loss)


def build_learner(run: OwnRun, model_config: ModelConfig, loss: str, vocab_size: int | None,
                  seed: int):  # fmt: skip
    """The learner, from `seed`'s random weights: open_clip's config or jestkit's encoder."""
    torch.manual_seed(seed)
    if run.own.open_clip is None:
        return build_model(model_config, vocab_size or run.shards.vocab_size, loss)
    from jestkit.models.openclip import open_clip_model

    model = open_clip_model(run.own.open_clip)
    if model.loss_name != loss:
        raise ValueError(
            f"the open_clip model {run.own.open_clip!r} trains with the {model.loss_name} loss "
            f"(SigLIP configs have a logit_bias): set --selection.loss {model.loss_name}"
        )
    return model


def build_source(run: OwnRun, model: nn.Module) -> StreamSource:
    """The shards as a streamed source, with the learner's image transform and tokenizer."""
    if run.own.open_clip is None:
        from jestkit.data.prepare import MAX_LEN

        transform = grayscale(OUR_IMAGE_SIZE)
        tokenize = HashedWords(run.shards.vocab_size, MAX_LEN)
    else:
        from jestkit.models.openclip import open_clip_inputs

        transform, tokenize = open_clip_inputs(run.own.open_clip, model)
    return StreamSource(run.shards.pool(transform), tokenize)


def _on_cpu(evaluate):
    """Fashion-MNIST's evaluation on a CPU float32 copy of a model trained elsewhere."""
    return lambda model: evaluate(copy.deepcopy(model).float().cpu())


def train_own(
    run: OwnRun,
    model_config: ModelConfig,
    config: TrainConfig,
    reference_dir: str,
    out_dir: str | os.PathLike,
    data=None,
    resume: bool = False,
    progress: bool = True,
    dist: Distributed | None = None,
) -> dict:
    """One learner run on the data, model, reference and device of `run`; data: the prepared
    Fashion-MNIST captions when run.shards.pattern is None. Writes OUT/checkpoint.pt as it goes
    and OUT/result.json (train_learner's keys, plus 'losses', 'data', 'model', 'device',
    'skipped': the bad samples skipped, by reason)."""
    dist = dist or Distributed()
    device = resolve_device(run.own.device)
    loss = config.selection.loss
    if run.shards.pattern is None:
        if data is None:
            raise ValueError("no data: give --shards.pattern, or the Fashion-MNIST captions")
        if run.own.open_clip is not None:
            raise ValueError(
                "an open_clip model trains on image-caption shards (--shards.pattern): the "
                "Fashion-MNIST source is tokenised for jestkit's own text tower"
            )
    vocab = None if data is None or run.shards.pattern else len(data.vocab)
    model = build_learner(run, model_config, loss, vocab, config.training.seed).to(device)
    if run.shards.pattern:
        source, evaluate = build_source(run, model), None
    else:
        from jestkit.training.evaluate import evaluator

        source = data.pool_source()
        evaluate = evaluator(data) if device.type == "cpu" else _on_cpu(evaluator(data))
    reference = None
    if config.policy.uses_reference:
        reference = load_any_reference(run, reference_dir, loss, model, data, source, device)
    out = Path(out_dir)
    trainer = Trainer(model, config, source, reference, evaluate, out, progress=progress,
                      dist=dist, autocast=bf16_autocast(device))  # fmt: skip
    return run_and_record(trainer, resume, out, lambda: {
        "model_config": asdict(model_config),
        "data": run.shards.pattern or "fashion-mnist",
        "model": run.own.open_clip or "jestkit",
        "device": str(device),
        "bf16": trainer.autocast,
        "skipped": getattr(source, "skipped", {}),
    })  # fmt: skip


__all__ = ["OwnModel", "OwnRun", "bf16_autocast", "resolve_device", "train_own"]
