"""One learner run end to end, every stage, on a small slice of the real Fashion-MNIST files."""

import json

import pytest
from helpers import MODEL, TINY

from jestkit.fashion.learner import train_learner


@pytest.mark.parametrize(
    "policy",
    [
        "learnability-joint",
        "flexi-learnability-independent",
        "hard_learner-joint",
        "easy_reference-independent",
    ],
)
def test_every_stage_runs(data, reference_dir, tmp_path, policy):
    config = TINY.with_name(policy)
    result = train_learner(data, MODEL, config, reference_dir, tmp_path, progress=False)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["steps"] == 6 and saved["policy"] == config.name()
    assert [h["step"] for h in saved["history"]] == [0, 3, 6]
    assert set(result["final"]) == {"zero_shot", "i2t_r1", "t2i_r1"}
    flops = result["flops"]
    assert flops["train"] > 0 and flops["reference_score"] == 0
    assert (flops["learner_score"] > 0) == (not policy.startswith("easy_reference"))


def test_flexi_scoring_is_cheaper(data, reference_dir, tmp_path):
    full = train_learner(data, MODEL, TINY, reference_dir, tmp_path / "a", progress=False)
    flexi = TINY.with_name("flexi-learnability-joint")
    cheap = train_learner(data, MODEL, flexi, reference_dir, tmp_path / "b", progress=False)
    ratio = cheap["flops_per_step"]["learner_score"] / full["flops_per_step"]["learner_score"]
    # the image tower at patch 14 sees 4 tokens instead of 16; the text tower costs the same
    assert ratio < 0.75, ratio
