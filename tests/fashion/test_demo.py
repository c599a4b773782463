"""The demo: uniform's frontier, the policies' speed-ups read off it, results and curves."""

import json

import pytest
from helpers import MODEL, POOL, TINY

from jestkit.engine.config import TrainingConfig
from jestkit.fashion.demo import demo_configs, run_demo
from jestkit.payoff.report import speedups


def test_demo_writes_results_and_curves(tmp_path, capsys):
    results = run_demo(
        tmp_path,
        POOL,
        MODEL,
        TrainingConfig(steps=10, batch_size=32, eval_every=None),
        TINY,
        policies=("learnability-joint",),
        uniform_budgets=(0.5, 1, 2),
        progress=False,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert set(saved["policies"]) == {"learnability-joint", "filter-30"}
    # uniform ran at 3, 6 and 12 steps (TINY trains 6), each its own run with its own schedule
    assert [u["steps"] for u in saved["uniform"]] == [3, 6, 12]
    for u in saved["uniform"]:
        run = json.loads((tmp_path / "runs" / f"uniform-{u['steps']}" / "result.json").read_text())
        assert run["config"]["training"]["steps"] == u["steps"] == run["steps"]
    row = saved["policies"]["learnability-joint"]
    for cost in ("steps", "flops", "seconds"):
        assert row[f"speedup_{cost}"]["bound"] in ("=", "<", ">")
    # the row's speed-ups are the frontier reader's, on the saved runs
    uniform = [json.loads((tmp_path / "runs" / f"uniform-{n}" / "result.json").read_text())
               for n in (3, 6, 12)]  # fmt: skip
    policy = json.loads((tmp_path / "runs" / "learnability-joint" / "result.json").read_text())
    expected = speedups(uniform, policy)
    assert row["speedup_flops"]["value"] == pytest.approx(expected["flops"].value)
    assert row["speedup_steps"]["bound"] == expected["steps"].bound
    assert saved["config"]["train"]["training"]["steps"] == 6
    assert results["policies"] == saved["policies"]
    # the offline filter: uniform on the reference's top 30 %, no learner scoring
    filtered = json.loads((tmp_path / "runs" / "filter-30" / "result.json").read_text())
    assert filtered["flops"]["learner_score"] == 0 and filtered["steps"] == 6
    assert filtered["config"]["selection"]["policy"] == "uniform"
    assert saved["policies"]["filter-30"]["speedup_flops"]["bound"] in ("=", "<", ">")
    best = max(saved["policies"], key=lambda n: saved["policies"][n]["final_zero_shot"])
    assert f"the highest final zero-shot accuracy is {best}'s" in capsys.readouterr().out


def test_demo_configs_fail_before_any_work():
    with pytest.raises(ValueError, match="baseline frontier"):
        demo_configs(TINY, ("uniform", "learnability-joint"), (1, 4))
    with pytest.raises(ValueError, match="positive"):
        demo_configs(TINY, ("learnability-joint",), (0, 4))
    with pytest.raises(ValueError, match="same step count"):
        demo_configs(TINY, ("learnability-joint",), (1, 1.01))
    with pytest.raises(ValueError, match="unknown policy"):
        demo_configs(TINY, ("nonsense",), (1, 4))
    names = list(demo_configs(TINY, ("learnability-joint",), (4, 0.5)))
    assert names == ["uniform-3", "uniform-24", "learnability-joint"]
    names = list(demo_configs(TINY, ("learnability-joint",), (4, 0.5), filter_keep=0.3))
    assert names == ["uniform-3", "uniform-24", "learnability-joint", "filter-30"]
    with pytest.raises(ValueError, match="filter_keep"):
        demo_configs(TINY, ("learnability-joint",), (1, 4), filter_keep=1.0)
