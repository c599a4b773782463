"""One run, recorded: resume if asked, run the loop, write OUT/result.json."""

from __future__ import annotations

import time
from pathlib import Path

from jestkit.engine.checkpoint import write_json_atomic
from jestkit.engine.loop import Trainer


def run_and_record(trainer: Trainer, resume: bool, out: Path, extra=None) -> dict:
    """Resume `trainer` from its checkpoint if asked, run it, and return its summary with the
    wall time, the training time (without evaluations) and what extra() gives after the run,
    also written to OUT/result.json by rank 0."""
    dist = trainer.dist
    if resume and trainer.resume() and dist.is_main:
        print(f"resumed {trainer.desc} from {trainer.checkpoint_path} at step {trainer.step}")
    start = time.perf_counter()
    result = trainer.run()
    result["wall_seconds"] = time.perf_counter() - start
    result["train_seconds"] = result["wall_seconds"] - result["eval_seconds"]
    result.update(extra() if extra is not None else {})
    if dist.is_main:
        write_json_atomic(result, out / "result.json")
    return result
