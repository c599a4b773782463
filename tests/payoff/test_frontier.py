"""The frontier reader on made-up frontiers whose answers are known in closed form."""

import math

import pytest

from jestkit.payoff.frontier import Speedup, cost_to_reach, envelope, speedup


def test_interpolates_in_log_cost():
    # accuracy rises linearly in log2(cost): 0.2 at 100, 0.4 at 200, 0.6 at 400, 0.8 at 800
    uniform = [(100, 0.2), (200, 0.4), (400, 0.6), (800, 0.8)]
    cost, bound = cost_to_reach(uniform, 0.5)  # half way between 200 and 400 in log cost
    assert bound == "="
    assert cost == pytest.approx(200 * math.sqrt(2))
    # a run reaching 0.7 at cost 50: uniform needs 400 * sqrt(2)
    s = speedup(uniform, 0.7, 50)
    assert s.bound == "=" and s.value == pytest.approx(400 * math.sqrt(2) / 50)
    assert str(s) == f"{400 * math.sqrt(2) / 50:.2f}×"


def test_exact_budget_hit():
    uniform = [(100, 0.2), (200, 0.4), (400, 0.6)]
    assert cost_to_reach(uniform, 0.4) == (pytest.approx(200), "=")
    assert speedup(uniform, 0.6, 100).value == pytest.approx(4.0)


def test_never_reached_is_a_lower_bound_not_an_extrapolation():
    uniform = [(100, 0.1), (200, 0.2), (400, 0.3)]
    s = speedup(uniform, 0.72, 20)
    assert s == Speedup(20.0, ">")  # 400 / 20: uniform's largest budget, not a guess past it
    assert str(s) == "> 20.00×"


def test_reached_at_the_smallest_budget_is_an_upper_bound():
    uniform = [(100, 0.5), (200, 0.6)]
    s = speedup(uniform, 0.3, 50)
    assert s == Speedup(2.0, "<")
    assert str(s) == "< 2.00×"


def test_noise_never_makes_the_frontier_go_down():
    # the 400-step run did worse than the 200-step one: the envelope keeps 0.5
    noisy = [(200, 0.5), (100, 0.3), (400, 0.45), (800, 0.7)]
    assert envelope(noisy) == [(100, 0.3), (200, 0.5), (400, 0.5), (800, 0.7)]
    # 0.6 lies between 400 (0.5) and 800 (0.7): half way in log cost
    cost, bound = cost_to_reach(noisy, 0.6)
    assert bound == "=" and cost == pytest.approx(400 * math.sqrt(2))


def test_each_budget_is_its_own_run():
    """A frontier is one final point per budget; a curve of one run read at intermediate steps
    is a different (biased) thing: the reader takes points, never a history."""
    uniform = [(100, 0.30), (200, 0.50), (400, 0.62), (800, 0.70)]
    # JEST at 100 steps reaching 0.62 is a 4x saving, whatever a single 800-step uniform run's
    # curve read at step 100 would say
    assert speedup(uniform, 0.62, 100).value == pytest.approx(4.0)


def test_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        envelope([])
    with pytest.raises(ValueError, match="positive"):
        envelope([(0, 0.5)])
    with pytest.raises(ValueError, match="finite"):
        envelope([(1, float("nan"))])
    with pytest.raises(ValueError, match="cost must be positive"):
        speedup([(1, 0.5)], 0.5, 0)
    with pytest.raises(ValueError, match="bound"):
        Speedup(1.0, "~")
