"""The demo writes its results and curves."""

import json

from helpers import MODEL, POOL, TINY

from jestkit.training.config import TrainingConfig
from jestkit.training.demo import run_demo


def test_demo_writes_results_and_curves(tmp_path):
    results = run_demo(
        tmp_path,
        POOL,
        MODEL,
        TrainingConfig(steps=10, batch_size=32, eval_every=None),
        TINY,
        policies=("uniform", "learnability-joint"),
        progress=False,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert set(saved["policies"]) == {"uniform", "learnability-joint"}
    keys = {
        "final_zero_shot",
        "final_i2t_r1",
        "final_t2i_r1",
        "steps_to_target",
        "flops_to_target",
        "speedup_steps",
        "speedup_flops",
        "selected_noise_fraction",
    }
    for row in saved["policies"].values():
        assert keys <= set(row)
    assert saved["policies"]["uniform"]["steps_to_target"] is not None
    assert saved["config"]["train"]["training"]["steps"] == 6
    assert results["target_zero_shot"] == saved["policies"]["uniform"]["final_zero_shot"]
