"""Held-out evaluation on your own data: `jestkit train --eval.*` (every training.eval_every
steps and at the end, recorded in result.json's history) and `jestkit eval CHECKPOINT`.

The sets are clip_benchmark's WebDataset layout or shard patterns (jestkit.own.evalsets); the
metrics are clip_benchmark's (jestkit.own.metrics). Each is recorded as NAME/METRIC:

    zero-shot   NAME/acc1, NAME/acc5 (5 classes or more), NAME/mean_per_class_recall
    retrieval   NAME/image_retrieval_recall@{1,5,10} (text -> image),
                NAME/text_retrieval_recall@{1,5,10} (image -> text), NAME/mean_recall@1

A held-out set must be held out: before training, the ids of the training shards are read
(no image is decoded) and a set sharing ids with them is refused, naming the count and a few
(`--eval.overlap warn` trains anyway and prints the count; `skip` does not read the training
shards, for pools too large to read twice). Ids are compared, so the check means something when
your samples carry real ids (a uid in KEY.json, DataComp's), not only img2dataset's keys.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from jestkit.data.shards import read_ids
from jestkit.engine.files import RecordError, read_json_record
from jestkit.own.evalsets import EvalSet, EvalSetError, load_eval_set, overlap, parse_spec
from jestkit.own.metrics import retrieval_metrics, zero_shot_metrics


@dataclass
class EvalConfig:
    """Held-out evaluation on your own data (jestkit.own.evaluate).

    Attributes:
        zeroshot: zero-shot classification sets, comma-separated, each a clip_benchmark
            WebDataset folder (test/ shards with KEY.cls, classnames.txt,
            zeroshot_classification_templates.txt), optionally NAME=FOLDER
        retrieval: image-caption retrieval sets, comma-separated, each a clip_benchmark folder
            (dataset_type.txt 'retrieval') or a tar shard pattern (KEY.txt: captions, one per
            line), optionally NAME=PATH
        batch_size: images or captions encoded at once
        overlap: a set sharing ids with the training shards: refuse (default), warn, or skip
            the check (the training shards' ids are then not read)
    """

    zeroshot: str | None = None
    retrieval: str | None = None
    batch_size: int = 256
    overlap: Literal["refuse", "warn", "skip"] = "refuse"

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be a positive int, got {self.batch_size!r}")

    @property
    def any(self) -> bool:
        return bool(_specs(self.zeroshot) or _specs(self.retrieval))


def _specs(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def load_sets(config: EvalConfig) -> list[EvalSet]:
    """Every set of `config`, loaded and checked; names must differ."""
    sets = [load_eval_set(s, "zeroshot") for s in _specs(config.zeroshot)]
    sets += [load_eval_set(s, "retrieval") for s in _specs(config.retrieval)]
    names = [s.name for s in sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        given = [spec for spec in _specs(config.zeroshot) + _specs(config.retrieval)
                 if parse_spec(spec)[0] == twice[0]]  # fmt: skip
        how = (f"{' and '.join(given)} give both the name {twice[0]!r}: give each its own NAME"
               if len(given) > 1 else f"two of them are named {twice[0]!r} (by NAME= or by "
               "their folder's name): give each its own NAME=PATH")  # fmt: skip
        raise EvalSetError(f"evaluation set names must differ: {how}")
    return sets


def check_held_out(sets: list[EvalSet], train_shards, mode: str, progress: bool = True) -> dict:
    """The ids each set shares with `train_shards`: refused (mode 'refuse'), printed ('warn'),
    or not looked for ('skip')."""
    if mode == "skip" or not sets:
        return {}
    ids = tqdm(read_ids(train_shards), desc="training ids (held-out check)", unit=" ids",
               disable=not progress, leave=False)  # fmt: skip
    shared = {name: i for name, i in overlap(sets, ids).items() if i}
    if shared:
        text = "; ".join(f"{name!r} shares {len(i)} of its ids with the training shards (e.g. "
                         f"{', '.join(i[:3])})" for name, i in shared.items())  # fmt: skip
        if mode == "refuse":
            raise EvalSetError(f"{text}: a held-out set must be held out. Remove them from the "
                               "set or the pool, or pass --eval.overlap warn")  # fmt: skip
        print(f"warning: {text}", file=sys.stderr)
    return {name: len(i) for name, i in shared.items()}


def _decode(data: bytes, transform: Callable) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return transform(im.convert("RGB"))


@torch.no_grad()
def _encode_images(model, images: list[bytes], transform, batch_size: int, device):
    out = []
    for i in range(0, len(images), batch_size):
        batch = torch.stack([_decode(b, transform) for b in images[i : i + batch_size]])
        out.append(model.encode_image(batch.to(device)).float())
    return torch.cat(out)


@torch.no_grad()
def _encode_texts(model, tokens: torch.Tensor, batch_size: int, device):
    return torch.cat([model.encode_text(tokens[i : i + batch_size].to(device)).float()
                      for i in range(0, len(tokens), batch_size)])  # fmt: skip


class Evaluator:
    """model -> {NAME/metric: value} on the sets (what the Trainer calls every eval_every steps).
    transform: PIL image -> the model's input tensor; tokenize: captions -> (n, L) token ids (the
    model's own, as it trains). Captions and prompts are tokenised once, here."""

    def __init__(self, sets: list[EvalSet], transform: Callable, tokenize: Callable,
                 batch_size: int = 256):  # fmt: skip
        self.sets, self.transform, self.batch_size = sets, transform, batch_size
        self.tokens = []
        for s in sets:
            if s.kind == "zeroshot":
                self.tokens.append((tokenize(s.prompts()), None))
            else:
                texts, image = s.flat_captions()
                self.tokens.append((tokenize(texts), torch.tensor(image)))

    def __call__(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = {}
        try:
            for s, (tokens, text_image) in zip(self.sets, self.tokens, strict=True):
                img = _encode_images(model, s.images, self.transform, self.batch_size, device)
                txt = _encode_texts(model, tokens, self.batch_size, device)
                if s.kind == "zeroshot":
                    prompts = txt.view(len(s.classnames), len(s.templates), -1)
                    metrics = zero_shot_metrics(img, torch.tensor(s.labels, device=device),
                                                prompts)  # fmt: skip
                else:
                    metrics = retrieval_metrics(img, txt, text_image.to(device))
                out.update({f"{s.name}/{k}": v for k, v in metrics.items()})
        finally:
            model.train(was_training)
        return out


def headline(metrics: dict[str, float]) -> tuple[str, float] | None:
    """The first zero-shot acc1 or retrieval mean_recall@1 among `metrics` (the progress bar's)."""
    for key, value in metrics.items():
        if key.endswith(("/acc1", "/mean_recall@1")):
            return key, value
    return None


def metrics_table(metrics: dict[str, float]) -> str:
    """One line per set: its metrics."""
    by_set: dict[str, list[str]] = {}
    for key, value in metrics.items():
        name, _, metric = key.rpartition("/")
        by_set.setdefault(name, []).append(f"{metric} {value:.4f}")
    width = max((len(n) for n in by_set), default=0)
    return "\n".join(f"{name:<{width}}  {'  '.join(m)}" for name, m in by_set.items())


# -- jestkit eval -----------------------------------------------------------------------------


def load_checkpoint_model(checkpoint: str | os.PathLike, open_clip: str | None = None):
    """(model, image transform, tokenizer, description) of a checkpoint: a `jestkit train`
    run's checkpoint.pt (its model named by the run's result.json, or by open_clip) or an
    open_clip checkpoint (open_clip: its config)."""
    from jestkit.engine.checkpoint import is_checkpoint, load_checkpoint

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path} does not exist")
    run_file = path.parent / "result.json"
    ours = path.suffix == ".pt" and is_checkpoint(path)
    run = read_json_record(run_file, "a `jestkit train` run's result.json") if (
        ours and run_file.is_file() and not open_clip) else {}  # fmt: skip
    if run and "model" not in run:
        raise ValueError(f"{run_file} is of a run on Fashion-MNIST, not on shards: jestkit eval "
                         "evaluates models trained on your own data")  # fmt: skip
    if run and not isinstance(run["model"], str):
        raise RecordError(f"{run_file}: 'model' is {json.dumps(run['model'])[:60]}, it must be "
                          "a string (jestkit, or an open_clip config)")  # fmt: skip
    spec = open_clip or (run.get("model") if run.get("model") != "jestkit" else None)
    if spec is not None:
        from jestkit.openclip.dual import open_clip_inputs, open_clip_reference_file

        model = open_clip_reference_file(spec, path)
        transform, tokenize = open_clip_inputs(spec, model)
        return model, transform, tokenize, spec
    if run.get("model") != "jestkit":
        why = ("it is not a checkpoint jestkit wrote" if not ours else
               f"no result.json of a finished `jestkit train` run beside it ({run_file}) says "
               "which model it holds")  # fmt: skip
        raise ValueError(f"--checkpoint {path}: name its open_clip config with --open_clip "
                         f"({why})")  # fmt: skip
    from jestkit.data.stream import HashedWords, grayscale
    from jestkit.models.factory import IMAGE_SIZE, MAX_LEN, ModelConfig, build_model

    if "vocab_size" not in run:
        raise ValueError(f"{run_file} is of a run on Fashion-MNIST, not on shards: jestkit eval "
                         "evaluates models trained on your own data")  # fmt: skip
    run = read_json_record(run_file, "a `jestkit train` run's result.json", RUN_FIELDS)
    loss = run["config"]["selection"]["loss"]
    try:
        model = build_model(ModelConfig(**run["model_config"]), run["vocab_size"], loss)
    except (TypeError, ValueError) as e:
        raise RecordError(f"{run_file}: its model_config or vocab_size does not make a model "
                          f"({e})") from None  # fmt: skip
    try:
        model.load_state_dict(load_checkpoint(path)["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"--checkpoint {path} does not fit the model {run_file} names ({reason}): the "
            "checkpoint and the result.json beside it come from different runs"
        ) from None
    return model, grayscale(IMAGE_SIZE), HashedWords(run["vocab_size"], MAX_LEN), "jestkit"


# what a shard run's result.json must hold for `jestkit eval` to rebuild its model
RUN_FIELDS = {"model": str, "vocab_size": int, "model_config": dict, "config.selection.loss": str}


EVAL_FIELDS = {"checkpoint": str, "model": str, "sets": dict, "metrics": dict}


def check_eval_out(out: str | os.PathLike) -> Path:
    """Refuse, before the evaluation pass, a `jestkit eval --out` that would replace a jestkit
    record (checkpoint.pt, result.json, config.yaml, ...) or any existing file that is not an
    earlier eval.json, or that cannot be written (jestkit.engine.rundir.check_output_file)."""
    from jestkit.engine.rundir import RunDirError, check_output_file

    out = check_output_file(out, "--out", ".json")
    if out.exists():
        try:
            read_json_record(out, "an eval.json", EVAL_FIELDS)
        except RecordError as e:
            raise RunDirError(f"--out {out} exists and is not an earlier `jestkit eval` output "
                              f"({e}); it is never replaced: choose another file") from None
    return out


def evaluate_checkpoint(checkpoint: str | os.PathLike, config: EvalConfig,
                        open_clip: str | None = None, device: str = "cpu") -> dict:  # fmt: skip
    """`jestkit eval`: the checkpoint's metrics on the sets, with what was evaluated."""
    if not config.any:
        raise ValueError("nothing to evaluate: give --eval.zeroshot or --eval.retrieval sets")
    sets = load_sets(config)  # checked before the model is loaded
    model, transform, tokenize, name = load_checkpoint_model(checkpoint, open_clip)
    model = model.to(device).float()
    metrics = Evaluator(sets, transform, tokenize, config.batch_size)(model)
    return {
        "checkpoint": str(checkpoint),
        "model": name,
        "sets": {s.name: {"kind": s.kind, "samples": len(s), "shards": s.shards} for s in sets},
        "metrics": metrics,
    }


__all__ = ["EvalConfig", "Evaluator", "check_eval_out", "check_held_out", "evaluate_checkpoint",
           "load_sets"]
