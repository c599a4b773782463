"""Where a run's time goes: every phase of every step, in process CPU time and wall time.

A step is timed in phases, in the order train_step does them (jestkit.engine.step), then the
loop's evaluation and checkpoint when that step has them:

    data              draw the candidates (decode, wait for loader workers), move them to the
                      device, take this rank's share
    learner_score     the learner's forward pass over the super-batch (JEST-like policies)
    reference_score   the reference's scores (a cache lookup, or a frozen model's forward)
    select            the selection (the joint sampler) and gathering the chosen examples
    forward_backward  the training forward and backward pass (and, under torchrun, the
                      gradients' all-reduce)
    optimizer         the optimizer's and the learning-rate schedule's step
    account           what the step records: selection statistics, the loss
    evaluate          evaluation (only on the steps that evaluate; the one before the first
                      step counts in the totals, not in any step)
    checkpoint        writing checkpoint.pt (only on the steps that write it)

Each phase is measured twice: process CPU time (time.process_time: every thread of this
process, not DataLoader worker processes) and wall time (time.perf_counter). On a GPU the
device is synchronised at each phase's edges, so that a phase's wall time holds its kernels.
A phase a run never enters (learner scoring for uniform) is absent. `step` is a step's whole time
from its draw to its checkpoint (the phases, and what lies between them), `run` the whole of
Trainer.run: the steps, the evaluation before the first step, the progress bar.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

PHASES = ("data", "learner_score", "reference_score", "select", "forward_backward", "optimizer",
          "account", "evaluate", "checkpoint")  # fmt: skip
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _now() -> dict[str, float]:
    return {name: clock() for name, clock in CLOCKS.items()}


class PhaseClock:
    """Seconds by phase: per step (lists, one entry per step) and in total.

    clock.start_step(); with clock.phase("data"): ...; clock.end_step()
    """

    def __init__(self, device: torch.device | None = None):
        self.cuda = device is not None and device.type == "cuda"
        self.device = device
        # {clock: {phase or "step": [seconds of each step]}}; {clock: {phase, "step", "run": s}}
        self.per_step: dict[str, dict[str, list[float]]] = {c: {} for c in CLOCKS}
        self.total: dict[str, dict[str, float]] = {c: {} for c in CLOCKS}
        self._step: dict[str, dict[str, float]] | None = None  # the open step's phases
        self._step_start: dict[str, float] | None = None
        self._run_start: dict[str, float] | None = None

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase `name`, in the open step (if any) and in the totals."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; the phases are {PHASES}")
        self._sync()
        start = _now()
        try:
            yield
        finally:
            self._sync()
            end = _now()
            for c in CLOCKS:
                spent = end[c] - start[c]
                self.total[c][name] = self.total[c].get(name, 0.0) + spent
                if self._step is not None:
                    self._step[c][name] = self._step[c].get(name, 0.0) + spent

    def start_step(self) -> None:
        self._sync()
        self._step = {c: {} for c in CLOCKS}
        self._step_start = _now()

    def end_step(self) -> None:
        """Close the open step: its phases (0 for those it did not enter) and its whole time."""
        self._sync()
        end = _now()
        for c in CLOCKS:
            _append(self.per_step[c], self._step[c], end[c] - self._step_start[c])
            self.total[c]["step"] = self.total[c].get("step", 0.0) + end[c] - self._step_start[c]
        self._step = self._step_start = None

    @contextmanager
    def run(self) -> Iterator[None]:
        """Time a whole Trainer.run (added up over resumed processes)."""
        self._run_start = _now()
        try:
            yield
        finally:
            end = _now()
            for c in CLOCKS:
                self.total[c]["run"] = self.total[c].get("run", 0.0) + end[c] - self._run_start[c]
            self._run_start = None

    def last_step(self) -> dict[str, dict[str, float]]:
        """The last finished step's seconds: {"cpu": {phase: s, "step": s}, "wall": {...}}
        (what a per-step metrics writer records)."""
        return {c: {k: v[-1] for k, v in self.per_step[c].items()} for c in CLOCKS}

    def summary(self) -> dict:
        """What result.json's "timing" holds: the phases' order, the totals and every step's
        seconds, per clock ("cpu", "wall")."""
        order = [*PHASES, "step", "run"]
        return {
            "phases": [p for p in PHASES if p in self.total["wall"]],
            "total": {c: {k: self.total[c][k] for k in order if k in self.total[c]}
                      for c in CLOCKS},  # fmt: skip
            "per_step": {c: {k: list(self.per_step[c][k]) for k in order if k in self.per_step[c]}
                         for c in CLOCKS},  # fmt: skip
        }

    def state_dict(self) -> dict:
        """Everything so far. An open step (a checkpoint is written from inside its step) is
        kept as a finished step with the phases it has had, so that a resumed run has one entry
        a step; an open run counts up to now."""
        per_step = {c: {k: list(v) for k, v in self.per_step[c].items()} for c in CLOCKS}
        total = {c: dict(self.total[c]) for c in CLOCKS}
        now = _now()
        for c in CLOCKS:
            if self._step is not None:
                step = now[c] - self._step_start[c]
                _append(per_step[c], self._step[c], step)
                total[c]["step"] = total[c].get("step", 0.0) + step
            if self._run_start is not None:
                total[c]["run"] = total[c].get("run", 0.0) + now[c] - self._run_start[c]
        return {"per_step": per_step, "total": total}

    def load_state_dict(self, state: dict) -> None:
        self.per_step = {c: {k: list(v) for k, v in state["per_step"][c].items()} for c in CLOCKS}
        self.total = {c: dict(state["total"][c]) for c in CLOCKS}


def _append(lists: dict[str, list[float]], phases: dict[str, float], step: float) -> None:
    """Add one step to per-step lists: its phases (0 for those it did not enter), its time."""
    n = len(lists.setdefault("step", []))
    for name in phases:
        lists.setdefault(name, [0.0] * n)  # a phase first entered now: 0 in the earlier steps
    for name, values in lists.items():
        values.append(step if name == "step" else phases.get(name, 0.0))
