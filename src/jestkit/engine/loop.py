"""The training loop around the step (jestkit.engine.step): evaluation, progress, checkpoints.

FLOPs are measured with torch.utils.flop_counter on the first step of each kind and split into
training, learner scoring and reference scoring (zero: the reference comes from its cache); see
jestkit.engine.flops. Time is kept by phase (jestkit.engine.timing: data, learner scoring,
reference scoring, selection, forward/backward, optimizer, evaluation, checkpoint), in process
CPU time and wall time, per step and in total: result.json's "timing". The data wait (the data
phase's wall time: the source's draw, waiting for decoded samples) is kept per step with each
step's wall time; the progress bar shows its share of the step time over the last 20 steps,
result.json its total share (`data_wait_share`; on rank 0, under torchrun). Under torchrun
(jestkit.dropin.distributed, gloo on CPU) the FLOPs are those of all ranks together, the times
are rank 0's, and rank 0 evaluates and writes the files.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from jestkit.core import Embeddings, Selector
from jestkit.data.source import DataSource, Examples
from jestkit.dropin.distributed import (
    Distributed,
    GlobalSelector,
    broadcast_parameters,
    per_rank_batch,
)
from jestkit.engine.checkpoint import (
    CheckpointError,
    check_same_config,
    load_checkpoint,
    save_checkpoint,
    save_numbered,
)
from jestkit.engine.config import TrainConfig
from jestkit.engine.flops import FlopMeter
from jestkit.engine.reports import Reports, step_record
from jestkit.engine.stats import SelectionStats
from jestkit.engine.step import train_step
from jestkit.engine.timing import PhaseClock
from jestkit.models.dual import DualEncoder

# settings a resumed run may change: where its numbered checkpoints go, not what it trains
NOT_COMPARED = ("training.save_every", "training.keep_checkpoints")


def lr_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to zero at `total` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class Trainer:
    """Trains `model` on `source` (a jestkit.data.source.DataSource) with the config's policy.

    reference: Examples -> jestkit.Embeddings: the cached reference (ReferenceOutputs) or a
        frozen model scoring every super-batch (ModelReference); None for policies without it.
    evaluate: model -> dict of metrics, called every eval_every steps and at the end.
    out_dir: where checkpoint.pt is written; None keeps nothing on disk.
    dist: this process's place under torchrun (jestkit.dropin.distributed.setup()); default one
    process. The model (jestkit's DualEncoder or an OpenClipDual) must take config.scoring's
    view (model.check_view). The model's device is where batches go; autocast: the training
    forward pass under bfloat16 autocast (the loss in float32). A streamed source (one with
    state_dict) is saved in the checkpoints and restored on resume. Seeds: training.seed for the
    data order, + 1 for selection, + 2 for scoring views.
    run_info: what else the run depends on (model config, data and reference fingerprints),
    saved in the checkpoint and compared on resume like the config.
    report_to: where the metrics go while the run goes, in out_dir (jestkit.engine.reports:
    'jsonl' for OUT/metrics.jsonl, 'tensorboard', 'wandb'); export: a function of the
    checkpoint's state returning extra entries saved with it (the open_clip model's config).
    """

    def __init__(
        self,
        model: DualEncoder,
        config: TrainConfig,
        source: DataSource,
        reference: Callable[[Examples], Embeddings] | None = None,
        evaluate: Callable[[DualEncoder], dict] | None = None,
        out_dir: str | os.PathLike | None = None,
        progress: bool = True,
        desc: str | None = None,
        dist: Distributed | None = None,
        autocast: bool = False,
        run_info: dict | None = None,
        report_to: tuple[str, ...] = ("jsonl",),
        export: Callable[[], dict] | None = None,
    ):
        if config.policy.uses_reference and reference is None:
            raise ValueError(f"policy {config.name()!r} needs the reference (its cache)")
        scoring = config.scoring  # a view the model cannot take: refused before any work
        model.check_view(scoring.view(), scoring.multires_fraction)
        if hasattr(source, "__len__") and len(source) < config.super_batch_size():
            raise ValueError(
                f"the super-batch ({config.super_batch_size()}) is larger than the data "
                f"({len(source)} examples); lower batch_size or filter_ratio"
            )
        self.dist = dist or Distributed()
        per_rank_batch(config.super_batch_size(), self.dist.world_size)  # B and b split evenly
        per_rank_batch(config.training.batch_size, self.dist.world_size)
        if self.dist.world_size > 1:
            broadcast_parameters(model, self.dist.group)
        self.model, self.config, self.source = model, config, source
        self.device = next(model.parameters()).device  # batches are moved here
        self.autocast = autocast  # train the forward pass under bfloat16 autocast
        self.reference, self.evaluate = reference, evaluate
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress, self.desc = progress, desc or config.name()
        self.run_info = dict(run_info or {})
        self.report_to, self.export = tuple(report_to), export
        self.reports = Reports(None, ())
        train = config.training
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=train.lr, weight_decay=train.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(train.warmup, train.steps)
        )
        if self.dist.world_size == 1:
            self.selector = Selector(config.selection, seed=train.seed + 1)
        else:
            self.selector = GlobalSelector(
                config.selection, seed=train.seed + 1, group=self.dist.group
            )
        self.data_generator = torch.Generator().manual_seed(train.seed)
        self.view_generator = torch.Generator().manual_seed(train.seed + 2)
        self.step = 0
        self.history: list[dict] = []
        self.losses: list[float] = []  # the training loss of every step
        self.step_seconds: list[float] = []  # train_step's wall time (data wait included)
        self.eval_seconds = 0.0  # wall time spent evaluating, in this process's run
        self.flops = FlopMeter(self.dist.world_size)
        self.clock = PhaseClock(self.device)  # seconds by phase (jestkit.engine.timing)
        self.stats = SelectionStats(source.categories)
        self._first_draw: tuple[Examples, dict[str, float]] | None = None

    def draw_first(self) -> None:
        """Draw the next step's super-batch now (the step takes it, its wait counted in that
        step): a source that cannot give one (a super-batch larger than the data, unreadable
        shards) is refused before the run writes its records. Nothing is drawn once the run has
        reached training.steps."""
        if self._first_draw is None and self.step < self.config.training.steps:
            B = self.config.super_batch_size()
            self._first_draw = self.clock.timed(lambda: self.source.draw(B, self.data_generator))

    def take_first_draw(self) -> Examples | None:
        """The super-batch draw_first() drew, once (None: draw as usual)."""
        first, self._first_draw = self._first_draw, None
        return None if first is None else first[0]

    @property
    def data_wait(self) -> list[float]:
        """The seconds each finished step spent in its data phase (source.draw)."""
        return self.clock.per_step["wall"].get("data", [])

    @property
    def selected_ids(self) -> list[torch.Tensor]:
        """The ids trained on, one tensor per step."""
        return self.stats.selected_ids

    def _record_eval(self) -> None:
        if self.evaluate is None or not self.dist.is_main:  # rank 0 evaluates and records
            return
        if self.history and self.history[-1]["step"] == self.step:
            return
        record = {"step": self.step, "flops": self.flops.sum(), **self.flops.total}
        start = time.perf_counter()
        with self.clock.phase("evaluate"):
            record.update(self.evaluate(self.model))
        self.eval_seconds += time.perf_counter() - start
        self.history.append(record)
        self.reports.log("eval", record)

    def run(self, stop_at: int | None = None) -> dict:
        """Train to training.steps (or stop after `stop_at` steps, checkpointed, to resume)."""
        train = self.config.training
        last = train.steps if stop_at is None else min(stop_at, train.steps)
        if self.dist.is_main:
            self.reports = Reports(self.out_dir, self.report_to, self.step, self.desc,
                                   asdict(self.config))  # fmt: skip
        try:
            with self.clock.run():
                self._run(last)
        finally:
            self.reports.close()
        return self.summary()

    def _run(self, last: int) -> None:
        train = self.config.training
        if self.step == 0:
            self._record_eval()
        bar = tqdm(
            total=last,
            initial=self.step,
            desc=self.desc,
            disable=not self.progress or not self.dist.is_main,
            dynamic_ncols=True,
            leave=False,
        )
        while self.step < last:
            ahead = self._first_draw[1] if self._first_draw is not None else None
            self.clock.start_step(ahead)  # a super-batch drawn ahead: its wait is this step's
            start = time.perf_counter() - (ahead["wall"] if ahead else 0.0)
            lr = self.optimizer.param_groups[0]["lr"]
            loss = train_step(self)
            self.step_seconds.append(time.perf_counter() - start)
            self.losses.append(loss)
            evaluated = self.step % train.eval_interval == 0 or self.step == train.steps
            if evaluated:
                self._record_eval()
            if self.step % train.checkpoint_every == 0 or self.step == last:
                self.save()
            self.clock.end_step()
            self.reports.log("train", step_record(self, loss, lr))
            bar.update(1)
            postfix = {"loss": f"{loss:.3f}", "data": f"{self._wait_share(20):.0%}"}
            if evaluated and self.history:  # the first metric the evaluation gave
                name, value = next(iter(self.final_metrics().items()), ("", None))
                if value is not None:
                    postfix[name] = f"{value:.3f}"
            bar.set_postfix(postfix)
        bar.close()

    def _wait_share(self, last: int | None = None) -> float:
        """The share of the step time spent waiting for data (over the last `last` steps)."""
        waits, steps = self.data_wait[-(last or 0):], self.step_seconds[-(last or 0):]
        return sum(waits) / max(sum(steps), 1e-12)

    def final_metrics(self) -> dict:
        """The last evaluation's metrics (what evaluate returned), without its step and FLOPs."""
        last = self.history[-1] if self.history else {}
        return {k: v for k, v in last.items() if k not in ("step", "flops", *self.flops.total)}

    def summary(self) -> dict:
        result = {
            "policy": self.config.name(),
            "config": asdict(self.config),
            "steps": self.step,
            "flops": dict(self.flops.total),
            "flops_per_step": dict(self.flops.per_step),
            "final": self.final_metrics(),
            "history": self.history,
            "eval_seconds": self.eval_seconds,
            "losses": self.losses,
            "data_wait_seconds": sum(self.data_wait),
            "data_wait_share": self._wait_share(),
            "data_wait": self.data_wait,
            "step_seconds": self.step_seconds,
            "timing": self.clock.summary(),
        }
        for name in self.stats.categories:  # e.g. selected_noise_fraction
            result[f"selected_{name}_fraction"] = self.stats.fractions(name)
        return result

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "run": self.run_info,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "selector": self.selector.state_dict(),
            "data_generator": self.data_generator.get_state(),
            "view_generator": self.view_generator.get_state(),
            "history": self.history,
            **self.flops.state_dict(),
            "stats": self.stats.state_dict(),
            "losses": self.losses,
            "step_seconds": self.step_seconds,
            "clock": self.clock.state_dict(),
            **({"source": self.source.state_dict()} if self._streamed else {}),
        }

    @property
    def _streamed(self) -> bool:
        return hasattr(self.source, "state_dict")

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; a ValueError names the first setting that differs from the
        run that wrote it (every setting must match: resume continues exactly, never with a
        stretched schedule or other data)."""
        check_same_config(state.get("run", {}), self.run_info)
        check_same_config(state["config"], asdict(self.config), may_differ=NOT_COMPARED)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.selector.load_state_dict(state["selector"])
        self.data_generator.set_state(state["data_generator"])
        self.view_generator.set_state(state["view_generator"])
        self.step, self.history = state["step"], state["history"]
        self.flops.load_state_dict(state)
        self.stats.load_state_dict(state["stats"])
        self.losses = list(state.get("losses", []))
        if "clock" in state:  # a checkpoint written before jestkit timed phases has none
            self.clock.load_state_dict(state["clock"])
        self.step_seconds = list(state.get("step_seconds", []))
        if self._streamed:
            if "source" not in state:
                raise ValueError("this checkpoint has no data-stream position: it was written by "
                                 "a run on another data source")  # fmt: skip
            self.source.load_state_dict(state["source"])

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoint.pt"

    def save(self) -> None:
        """Rank 0 writes the checkpoint; every rank builds the state (a streamed source that
        reads per rank gathers every rank's position there). Every training.save_every steps
        also a numbered copy, OUT/checkpoints/step_N.pt (resumable too), keeping the last
        training.keep_checkpoints of them."""
        if self.checkpoint_path is None:
            return
        with self.clock.phase("checkpoint"):
            state = self.state_dict() if self.dist.is_main or self._streamed else None
            if self.dist.is_main:
                if self.export is not None:
                    state.update(self.export())
                self.out_dir.mkdir(parents=True, exist_ok=True)
                save_checkpoint(state, self.checkpoint_path)
                every = self.config.training.save_every
                if every is not None and self.step % every == 0:
                    save_numbered(self.checkpoint_path, self.out_dir, self.step,
                                  self.config.training.keep_checkpoints)  # fmt: skip

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Load out_dir/checkpoint.pt (or `path`, e.g. a numbered checkpoint of this run) if it
        exists; True if it did. The file is loaded with torch.load(weights_only=True): a
        checkpoint that would run code, or a damaged one, is refused with a CheckpointError, as
        are other settings (ValueError)."""
        path = self.checkpoint_path if path is None else Path(path)
        if path is None or not path.exists():
            return False
        state = load_checkpoint(path)
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(
                f"{path} does not fit this run ({type(e).__name__}: {str(e).splitlines()[0]}); "
                f"resume with the settings that wrote it, or start afresh with --overwrite"
            ) from None
        return True
