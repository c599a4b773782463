"""A `jestkit train` run's open_clip model, in open_clip's own checkpoint layout.

jestkit's checkpoints (jestkit.engine.checkpoint) hold the whole run (optimizer, selector, data
position) inside a checksummed payload, the model's weights under `model.`: what resume needs,
and nothing open_clip reads. `export_open_clip` writes what open_clip_train writes,
{"epoch", "name", "state_dict"} (epoch: the run's step), which
`open_clip.create_model_and_transforms(config, pretrained=FILE)` and clip_benchmark
(`--model CONFIG --pretrained FILE`) load as they are. Every open_clip run writes it at its end
as OUT/open_clip_model.pt; `jestkit export RUN` writes it for any checkpoint of a run (a numbered
OUT/checkpoints/step_N.pt included). Its open_clip config, when it was a JSON file rather than a
name open_clip knows, is written beside it (FILE with the suffix .json, a bare model config as
the checkpoint recorded it): `open_clip.add_model_config(that file)` registers it under the
file's stem, the name to give create_model_and_transforms.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from jestkit.engine.checkpoint import CheckpointError, is_checkpoint, load_checkpoint, save_atomic
from jestkit.engine.files import write_bytes_atomic

EXPORT_NAME = "open_clip_model.pt"
PREFIX = "model."  # OpenClipDual holds the open_clip model as .model


def open_clip_record(spec: str, model_cfg: dict | None) -> dict:
    """What an open_clip run's checkpoints record of its model: its config name or file and,
    for a file, the config itself (so the checkpoint stands on its own)."""
    return {"open_clip": {"name": str(spec), "model_cfg": model_cfg}}


def state_dict_of(state: dict, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The open_clip model's state dict in a loaded jestkit checkpoint; a CheckpointError when
    the run trained jestkit's own dual encoder."""
    model = state.get("model", {})
    if not model or not all(k.startswith(PREFIX) for k in model):
        raise CheckpointError(
            f"{path} holds jestkit's own dual encoder, not an open_clip model: only runs with "
            f"--open_clip export to open_clip (evaluate this one with `jestkit eval`)"
        )
    return {k.removeprefix(PREFIX): v for k, v in model.items()}


def jestkit_state_dict(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The open_clip weights of a jestkit checkpoint file; None when the file is not one
    (an open_clip checkpoint, a state dict: open_clip loads those itself)."""
    path = Path(checkpoint)
    if path.suffix != ".pt" or not is_checkpoint(path):
        return None
    return state_dict_of(load_checkpoint(path), path)


def find_checkpoint(run: str | os.PathLike) -> Path:
    """A run folder's checkpoint.pt, or the checkpoint file given."""
    path = Path(run)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: give a `jestkit train` run folder or "
                                "one of its checkpoint files")  # fmt: skip
    return path


def export_open_clip(run: str | os.PathLike, out: str | os.PathLike | None = None,
                     name: str | None = None) -> dict:  # fmt: skip
    """Write the open_clip model of `run` (a run folder or a checkpoint file of one) as
    open_clip's {"epoch", "name", "state_dict"} to `out` (default: OUT/open_clip_model.pt
    beside the checkpoint's run); name: the run's name recorded (default: the run folder's).
    Returns {"path", "config" (the name to load it with), "config_file" (None, or the JSON
    config to register first), "step"}."""
    path = find_checkpoint(run)
    if not is_checkpoint(path):
        raise CheckpointError(f"{path} is not a checkpoint jestkit wrote: it needs no export")
    state = load_checkpoint(path)
    weights = state_dict_of(state, path)
    record = state.get("open_clip")
    if record is None:
        raise CheckpointError(
            f"{path} was written by a jestkit version that did not record the open_clip config; "
            "load it with jestkit.openclip.create_model(CONFIG, path), which reads it as it is"
        )
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    target = Path(out) if out is not None else run_dir / EXPORT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"epoch": int(state["step"]), "name": name or run_dir.resolve().name,
                 "state_dict": weights}, target)  # fmt: skip
    config_file = None
    if record.get("model_cfg") is not None:  # a JSON config: written beside it
        config_file = target.with_suffix(".json")
        write_bytes_atomic(json.dumps(record["model_cfg"], indent=2).encode(), config_file)
    config_name = record["name"] if config_file is None else config_file.stem
    return {"path": str(target), "config": config_name,
            "config_file": None if config_file is None else str(config_file),
            "step": int(state["step"])}  # fmt: skip


__all__ = ["EXPORT_NAME", "export_open_clip", "jestkit_state_dict", "open_clip_record"]
