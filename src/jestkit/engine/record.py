"""One run, recorded: resume if asked, run the loop, write OUT/result.json.

Records are written only once every check passed: config.yaml after the resume check (a refused
resume leaves the folder as it was), result.json at the end. Resuming a finished run (its
result.json written) changes nothing: the recorded result is returned as it is.
"""

from __future__ import annotations

import time
from pathlib import Path

from jestkit.engine.files import read_json_record, write_json_atomic
from jestkit.engine.loop import Trainer


def run_and_record(trainer: Trainer, resume: bool, out: Path, extra=None,
                   write_config=None) -> dict:  # fmt: skip
    """Resume `trainer` from its checkpoint if asked, run it, and return its summary with the
    wall time, the training time (without evaluations) and what extra() gives after the run,
    also written to OUT/result.json by rank 0. write_config(OUT): called by rank 0 once the
    resume check passed, before the first step (the CLI writes config.yaml)."""
    dist = trainer.dist
    if resume and trainer.resume():
        finished = out / "result.json"
        if finished.exists():
            if dist.is_main:
                print(f"{trainer.desc} in {out} already finished; {finished} left as it is")
            return read_json_record(finished, "a run's result.json")
        if dist.is_main:
            print(f"resumed {trainer.desc} from {trainer.checkpoint_path} at step {trainer.step}")
    if dist.is_main and write_config is not None:
        write_config(out)
    start = time.perf_counter()
    result = trainer.run()
    result["wall_seconds"] = time.perf_counter() - start
    result["train_seconds"] = result["wall_seconds"] - result["eval_seconds"]
    result.update(extra() if extra is not None else {})
    if dist.is_main:
        write_json_atomic(result, out / "result.json")
    return result
