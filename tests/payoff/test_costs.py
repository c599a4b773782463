"""The cost columns: training, learner scoring and the reference, adding up to the total."""

import pytest

from jestkit.payoff.costs import COLUMNS, cost_columns

REFERENCE = {"train_flops": 1.7e12, "cache_flops": 0.9e12}


def test_columns_add_up_to_the_total():
    run = {"flops": {"train": 2.0e12, "learner_score": 3.5e12, "reference_score": 0}}
    cost = cost_columns(run, REFERENCE)
    assert cost == {"train": 2.0e12, "learner_score": 3.5e12, "reference": 2.6e12,
                    "total": 8.1e12}  # fmt: skip
    assert cost["total"] == pytest.approx(sum(cost[c] for c in COLUMNS))
    # the reference's training and its pass over the pool are charged once, in full
    assert cost["reference"] == REFERENCE["train_flops"] + REFERENCE["cache_flops"]


def test_runs_without_a_reference_pay_nothing_for_one():
    run = {"flops": {"train": 1.0e12, "learner_score": 0, "reference_score": 0}}
    assert cost_columns(run, None) == {"train": 1.0e12, "learner_score": 0.0, "reference": 0.0,
                                       "total": 1.0e12}  # fmt: skip
    # a reference model scoring on the fly (no cache) adds its scoring to the reference column
    live = {"flops": {"train": 1.0e12, "learner_score": 0, "reference_score": 0.5e12}}
    assert cost_columns(live, REFERENCE)["reference"] == pytest.approx(3.1e12)
    with pytest.raises(ValueError, match="reference"):
        cost_columns(live, None)
    with pytest.raises(ValueError, match="unknown"):
        cost_columns({"flops": {"train": 1, "other": 2}}, None)


def test_on_real_runs_of_the_frontier_benchmark():
    """The committed benchmark runs: every column adds up, and a filter run pays the reference."""
    import json
    from pathlib import Path

    runs = Path(__file__).parents[2] / "benchmarks" / "results" / "frontier"
    ref = json.loads((runs / "reference_web_default.json").read_text())
    jest = json.loads((runs / "web_default_0.9_jest_100_lr0.004_s0.json").read_text())
    cost = cost_columns(jest, ref)
    assert cost["total"] == pytest.approx(jest["total_flops"] + ref["train_flops"]
                                          + ref["cache_flops"])  # fmt: skip
