"""The plan's rules: settings that spend the budget, the decision list, threshold fitting."""

import math

import pytest

from jestkit.plan.rules import MethodCost, PlanRules, decide, fit_threshold, settings

COSTS = {
    "uniform": MethodCost(1.0),
    "filter": MethodCost(1.0, uses_reference=True),
    "easy": MethodCost(1.0, uses_reference=True),
    "jest": MethodCost(1.0, 2.0, uses_reference=True),
}


def test_settings_spend_the_budget_with_the_reference_charged():
    s = settings(COSTS, reference_flops=40.0, budget=100.0, batch_size=10, pool_size=200)
    assert s["uniform"].steps == 100 and s["uniform"].flops == 100
    assert s["filter"].steps == 60 and s["filter"].flops == 100 and s["filter"].keep == 0.3
    assert s["filter"].revisits == pytest.approx(60 * 10 / 60)
    assert s["jest"].steps == 20 and s["jest"].filter_ratio == 0.9
    assert "jest" not in settings(COSTS, 40.0, 42.0, 10, 200)  # not one step of it fits


def test_the_decision_list():
    rules = PlanRules(easy_revisits=4, stop_revisits=7.5, margin=0.05)  # JEST above 15
    assert decide(0.6, 0.47, 3.6, rules).method == "uniform"  # waste 0.4 < 0.47
    assert decide(0.2, 0.2, 2.0, rules).method == "filter"
    assert decide(0.2, 0.2, 6.0, rules).method == "easy"
    assert decide(0.2, 0.2, 40.0, rules).method == "jest"
    assert decide(0.2, 1.2, 40.0, rules).method == "uniform"  # the reference alone is over
    near = decide(0.2, 0.2, 4.1, rules)
    assert near.method == "easy" and near.undecided == ["easy", "filter"]
    assert decide(0.5, 0.48, 2.0, rules).undecided == ["filter", "uniform"]
    assert decide(0.2, 0.2, 2.0, rules).undecided == []


def test_rules_refuse_bad_constants():
    with pytest.raises(ValueError, match="past_plateau >= 1"):
        PlanRules(past_plateau=0.5)
    assert PlanRules(easy_revisits=20, stop_revisits=5).jest_revisits == 20


def test_fit_threshold_separates_or_misplaces_the_fewest():
    assert fit_threshold([2.0, 3.0], [12.0]) == pytest.approx(6.0)
    assert fit_threshold([2.0], []) == math.inf
    assert fit_threshold([], [5.0]) == 0.0
    t = fit_threshold([1.0, 2.0, 10.0], [5.0, 20.0])  # 10 below and 5 above cannot both fit
    errors = sum(v >= t for v in (1.0, 2.0, 10.0)) + sum(v < t for v in (5.0, 20.0))
    assert errors == 1


def test_a_recommendation_that_cannot_run_falls_to_the_next_method_down():
    from jestkit.plan.rules import Decision, Setting
    from jestkit.plan.run import runnable

    spend = {n: Setting(n, 10, 1.0, None, None, None) for n in ("uniform", "filter")}
    d = Decision("jest", ["many revisits"], ["easy", "jest"])
    runnable(d, spend)
    assert d.method == "filter" and "jest cannot run" in d.reasons[-1] and d.undecided == []
    d = Decision("uniform", [], ["filter", "uniform"])
    runnable(d, spend)
    assert d.method == "uniform" and d.undecided == ["filter", "uniform"]
