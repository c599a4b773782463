"""Metrics while the run goes, where people look at them (`--report_to`, open_clip_train's flag).

    jsonl        OUT/metrics.jsonl: one JSON object a line, appended and flushed after every
                 step and every evaluation, so a killed run keeps every step it logged (on by
                 default)
    tensorboard  OUT/tensorboard/: event files (torch.utils.tensorboard's SummaryWriter; needs
                 `pip install 'jestkit[tensorboard]'`)
    wandb        Weights & Biases, its files in OUT/wandb/ (`pip install 'jestkit[wandb]'`;
                 WANDB_MODE=offline logs without a network, WANDB_PROJECT names the project)

A training line holds {"kind": "train", "step", "loss", "lr", "samples_per_second", ...}: the
step's statistics (`step_record`: its loss, the learning rate it trained with, its data wait
and wall time, its time by phase as jestkit.engine.timing's clock kept it, the FLOPs so far by
kind, the selection's counts); an evaluation line {"kind": "eval", "step", "flops",
NAME/metric...}.
TensorBoard and W&B get the same numbers as scalars named `train/loss`, `eval/NAME/acc1`, ...
at their step. A resumed run first drops what the killed run logged after its checkpoint (the
lines of later steps; TensorBoard's purge_step), then logs those steps again: the file holds each
step once.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jestkit.engine.checkpoint import flat
from jestkit.engine.files import write_bytes_atomic

if TYPE_CHECKING:
    from jestkit.engine.loop import Trainer

REPORTERS = ("jsonl", "tensorboard", "wandb")
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
_EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb"}


def parse_report_to(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """'jsonl,tensorboard' -> ('jsonl', 'tensorboard'); '' or 'none' -> (); a ValueError names
    an unknown one. Each named reporter's package must be installed (checked here, before any
    work)."""
    if value is None:
        return ()
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in names if n and n != "none"]
    unknown = [n for n in names if n not in REPORTERS]
    if unknown:
        raise ValueError(f"--report_to {unknown[0]!r}: choose among {', '.join(REPORTERS)} "
                         "(comma-separated), or none")  # fmt: skip
    for name in names:
        if name in _EXTRA:
            try:
                __import__(_EXTRA[name])
            except ImportError:
                raise ValueError(
                    f"--report_to {name} needs the {name} package: pip install "
                    f"'jestkit[{name}]'"
                ) from None
    return tuple(dict.fromkeys(names))


def step_record(t: Trainer, loss: float, lr: float) -> dict:
    """The statistics of trainer `t`'s step just done (t.step, its clock's step ended): what
    metrics.jsonl logs."""
    seconds = t.step_seconds[-1] if t.step_seconds else float("nan")
    b, B = t.config.training.batch_size, t.config.super_batch_size()
    record = {
        "step": t.step,
        "loss": loss,
        "lr": lr,
        "samples_per_second": b / seconds if seconds > 0 else float("nan"),
        "candidates_per_second": B / seconds if seconds > 0 else float("nan"),
        "step_seconds": seconds,
        "data_wait": t.data_wait[-1] if t.data_wait else float("nan"),
        "flops": dict(t.flops.total),
        "selection": {"batch_size": b, "super_batch_size": B},
    }
    for name in t.stats.categories:  # the share of each category trained on so far
        record["selection"][f"selected_{name}_fraction"] = t.stats.fractions(name)
    record["time"] = t.clock.last_step()  # {"wall": {phase: s}, "cpu": {phase: s}}
    return record


def _number(value) -> float | None:
    """A numeric field (bools included) as a float; None for anything else."""
    return float(value) if isinstance(value, int | float) else None


class JsonlReport:
    """OUT/metrics.jsonl, appended and flushed after every record."""

    def __init__(self, out: Path, resumed_at: int):
        self.path = out / METRICS_FILE
        keep = []
        if resumed_at > 0 and self.path.is_file():  # drop what came after the checkpoint
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by the kill
                if isinstance(row, dict) and row.get("step", math.inf) <= resumed_at:
                    keep.append(line)
        write_bytes_atomic("".join(line + "\n" for line in keep).encode(), self.path)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def log(self, kind: str, record: dict) -> None:
        self.file.write(json.dumps({"kind": kind, **record}, allow_nan=True) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardReport:
    """OUT/tensorboard/: every numeric field as a scalar, `KIND/field`, at its step."""

    def __init__(self, out: Path, resumed_at: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / TENSORBOARD_DIR),
                                    purge_step=resumed_at + 1 if resumed_at > 0 else None)

    def log(self, kind: str, record: dict) -> None:
        step = record["step"]
        for key, value in flat(record, sep="/").items():
            number = _number(value)
            if key != "step" and number is not None:
                self.writer.add_scalar(f"{kind}/{key}", number, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbReport:
    """A Weights & Biases run, its files in OUT/wandb/; a resumed jestkit run continues the same
    W&B run (its id kept in OUT/wandb/jestkit-run-id)."""

    def __init__(self, out: Path, resumed_at: int, name: str, config: dict):
        import wandb

        folder = out / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "jestkit-run-id"
        if resumed_at > 0 and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:16]
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(dir=str(out), project=os.environ.get("WANDB_PROJECT", "jestkit"),
                              name=name, id=run_id, resume="allow", config=config,
                              settings=wandb.Settings(console="off", silent=True))  # fmt: skip

    def log(self, kind: str, record: dict) -> None:
        scalars = {f"{kind}/{k}": _number(v)
                   for k, v in flat(record, sep="/").items() if k != "step"}  # fmt: skip
        self.run.log({k: v for k, v in scalars.items() if v is not None}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


class Reports:
    """The reporters of `report_to` for the run in `out` (None: none); resumed_at: the step the
    run continues from (0: a fresh run, whose old metrics.jsonl is replaced)."""

    def __init__(self, out: Path | None, report_to: Sequence[str], resumed_at: int = 0,
                 name: str = "", config: dict | None = None):  # fmt: skip
        self.reports = []
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        for kind in parse_report_to(report_to):
            if kind == "jsonl":
                self.reports.append(JsonlReport(out, resumed_at))
            elif kind == "tensorboard":
                self.reports.append(TensorBoardReport(out, resumed_at))
            else:
                self.reports.append(WandbReport(out, resumed_at, name, config or {}))

    def log(self, kind: str, record: dict) -> None:
        for report in self.reports:
            report.log(kind, record)

    def close(self) -> None:
        for report in self.reports:
            report.close()
        self.reports = []


def read_metrics(path: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """The records of a metrics.jsonl (those of `kind`: 'train' or 'eval'); a line cut by a
    kill is left out."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if kind is None or row.get("kind") == kind:
            rows.append(row)
    return rows
