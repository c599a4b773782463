"""The data wait: each step's seconds in source.draw, in result.json and the progress bar's
share, and the phase times of a run on own shards; `jestkit train --shards.workers` end to
end."""

from __future__ import annotations

import json
import time

from helpers import MODEL, TINY
from shard_files import write_shards

from jestkit.cli import main as cli_main
from jestkit.data.stream import ShardsConfig
from jestkit.engine.loop import Trainer
from jestkit.own.run import OwnRun, build_learner, build_source


class Slow:
    """A source whose draw takes at least `delay` seconds more."""

    def __init__(self, source, delay):
        self.source, self.delay, self.categories = source, delay, source.categories

    def draw(self, size, generator=None):
        time.sleep(self.delay)
        return self.source.draw(size, generator)


def test_the_wait_for_data_is_measured_per_step(tmp_path):
    pattern = write_shards(tmp_path / "s", shards=2, per_shard=100)
    run = OwnRun(ShardsConfig(pattern=pattern, buffer_size=20, vocab_size=512))
    config = TINY.with_name("uniform")  # 6 steps of b = 16
    model = build_learner(run, MODEL, "sigmoid", None, config.training.seed)
    trainer = Trainer(model, config, Slow(build_source(run, model), 0.2), progress=False)
    result = trainer.run()
    assert len(result["data_wait"]) == len(result["step_seconds"]) == 6
    assert all(w >= 0.2 for w in result["data_wait"])
    assert all(w < s for w, s in zip(result["data_wait"], result["step_seconds"], strict=True))
    share = sum(result["data_wait"]) / sum(result["step_seconds"])
    assert result["data_wait_share"] == share and 0.0 < share < 1.0
    assert result["data_wait_seconds"] == sum(result["data_wait"])
    timing = result["timing"]  # the data wait is the data phase of the run's phase times
    assert timing["per_step"]["wall"]["data"] == result["data_wait"]
    # uniform, no evaluation, no checkpoints: no scoring, evaluation or checkpoint phase
    assert timing["phases"] == ["data", "select", "forward_backward", "optimizer", "account"]


def test_train_with_workers_from_the_command_line(tmp_path, capsys):
    pattern = write_shards(tmp_path / "s", shards=4, per_shard=30)
    out = tmp_path / "run"
    code = cli_main(["train", "--shards.pattern", pattern, "--shards.workers", "2",
                     "--shards.vocab_size", "512", "--selection.policy", "uniform",
                     "--training.batch_size", "8", "--training.steps", "3", "--out", str(out),
                     "--quiet"])  # fmt: skip
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert (result["workers"], result["streams"], result["ranks"]) == (2, 2, 1)
    assert len(result["data_wait"]) == 3 and 0.0 < result["data_wait_share"] < 1.0
    assert all(len(v) == 3 for v in result["timing"]["per_step"]["cpu"].values())
    code = cli_main(["train", "--shards.pattern", pattern, "--shards.workers", "4",
                     "--shards.streams", "4", "--shards.vocab_size", "512", "--selection.policy",
                     "uniform", "--training.batch_size", "6", "--out", str(tmp_path / "x"),
                     "--quiet"])  # fmt: skip
    assert code == 2 and "B = 6 does not split over 4 streams" in capsys.readouterr().err
    assert not (tmp_path / "x" / "checkpoint.pt").exists()
