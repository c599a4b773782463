"""Settings that were accepted and then ignored or mis-recorded (issue 16, items 9 and 11):
refused before any work, or recorded as they ran."""

import pytest
from helpers import LIMIT, MODEL, POOL

from jestkit.cli import main as cli_main
from jestkit.core import SelectionConfig
from jestkit.engine.config import ScoringConfig, TrainConfig, TrainingConfig
from jestkit.engine.loop import lr_schedule
from jestkit.fashion.reference import train_reference

DATA = ["--data.limit", str(LIMIT), "--data.curated_size", str(POOL.curated_size), "--quiet"]


def test_warmup_longer_than_the_run_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainingConfig(steps=10, warmup_steps=11)
    short = TrainingConfig(steps=6)  # the default warm-up fits a short run: the peak is reached
    schedule = lr_schedule(short.warmup, short.steps)
    assert max(schedule(s) for s in range(short.steps)) == 1.0
    assert TrainingConfig(steps=300).warmup == 20
    out = tmp_path / "run"
    code = cli_main(["train", *DATA, "--training.steps", "5", "--training.warmup_steps", "10",
                     "--out", str(out)])  # fmt: skip
    assert code == 2 and "warmup_steps" in capsys.readouterr().err
    assert not out.exists()


def test_the_reference_records_the_batch_size_it_trained_with(data, tmp_path):
    config = TrainingConfig(steps=1, batch_size=100_000, eval_every=None)
    info = train_reference(data, MODEL, config, "sigmoid", tmp_path / "ref", progress=False)
    assert info["config"]["batch_size"] == len(data.curated)


def test_an_empty_curated_set_names_the_flag(tmp_path, capsys):
    code = cli_main(["reference", "--data.limit", str(LIMIT), "--data.curated_size", "0",
                     "--quiet", "--out", str(tmp_path / "ref")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--data.curated_size" in err and "batch_size" not in err
    assert not (tmp_path / "ref").exists()


@pytest.mark.parametrize("scoring", [ScoringConfig(patch_size=14), ScoringConfig(token_drop=0.5),
                                     ScoringConfig(text_token_drop=0.5), ScoringConfig(bf16=True)])
def test_scoring_settings_a_policy_never_uses_are_refused(scoring):
    for policy in ("uniform", "easy_reference"):
        with pytest.raises(ValueError, match="scoring"):
            TrainConfig(SelectionConfig(policy=policy), scoring)
    TrainConfig(SelectionConfig(policy="hard_learner"), scoring)  # it scores with the learner
    # multi-resolution training uses patch_size whatever the policy
    TrainConfig(SelectionConfig(policy="uniform"), ScoringConfig(patch_size=14,
                                                                 multires_fraction=0.5))
    flexi = TrainConfig(scoring=ScoringConfig(patch_size=14, token_drop=0.5))
    assert flexi.with_name("uniform").scoring == ScoringConfig()  # the demo's uniform runs
