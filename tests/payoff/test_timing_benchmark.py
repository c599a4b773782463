"""benchmarks/timing.py's reading and arithmetic on made-up rows (no timing here): per-step
rates from result.json's "timing", time = rate × steps + one-off, seconds to reach uniform's
accuracy and the time / FLOPs speed-up ratio, with its spread over repeats."""

import importlib.util
import sys
from pathlib import Path

import pytest

from jestkit.payoff.timing import (
    frontier_costs,
    speedups_at_uniform,
    spread,
    step_rate,
    time_against_flops,
)

ROOT = Path(__file__).parents[2]


def timing(steps: dict[str, list[float]], cpu_scale: float = 1.0) -> dict:
    """A result.json "timing" whose wall seconds are `steps` and CPU seconds cpu_scale × them."""
    per_step = {p: list(v) for p, v in steps.items()}
    per_step["step"] = [sum(v[i] for v in steps.values()) + 0.01 for i in range(len(per_step[
        next(iter(steps))]))]  # fmt: skip
    cpu = {p: [cpu_scale * x for x in v] for p, v in per_step.items()}
    return {"phases": list(steps), "per_step": {"cpu": cpu, "wall": per_step}, "total": {}}


def test_a_step_rate_skips_the_first_steps_and_leaves_out_evaluation():
    t = timing({"data": [9.0, 1.0, 1.0], "forward_backward": [9.0, 2.0, 4.0],
                "evaluate": [0.0, 0.0, 50.0]}, cpu_scale=0.5)  # fmt: skip
    wall = step_rate(t, "wall", skip=1)
    assert wall == {"data": 1.0, "forward_backward": 3.0, "step": 4.0}  # no evaluate
    assert step_rate(t, "cpu", skip=1)["step"] == 2.0
    with pytest.raises(ValueError, match="3 steps: none left after skipping 3"):
        step_rate(t, "wall", skip=3)


def test_spread():
    assert spread([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5), "min": 1.0,
                                  "max": 3.0, "n": 2}  # fmt: skip
    assert spread([5.0])["std"] == 0.0
    with pytest.raises(ValueError):
        spread([])


UNIFORM = [(100, 0.2), (200, 0.4), (400, 0.6)]  # (budget, final accuracy)
METHOD = [(50, 0.4), (100, 0.6)]


def test_seconds_to_reach_and_the_ratio_to_flops():
    # uniform: 1 s and 1 FLOP a step; the method: 2 s and 1.5 FLOPs a step
    u_time, m_time = frontier_costs(UNIFORM, 1.0), frontier_costs(METHOD, 2.0)
    assert m_time == [(100.0, 0.4), (200.0, 0.6)]
    rows = speedups_at_uniform(u_time, m_time)
    assert [r["bound"] for r in rows] == [">", ">", "="]  # its 50 steps already reach 0.2, 0.4
    assert rows[2]["method"] == pytest.approx(200.0) and rows[2]["speedup"] == pytest.approx(2.0)
    assert rows[0]["speedup"] == pytest.approx(100 / 100)  # a lower bound
    flops = speedups_at_uniform(frontier_costs(UNIFORM, 1.0), frontier_costs(METHOD, 1.5))
    assert flops[2]["speedup"] == pytest.approx(400 / 150)
    ratios = time_against_flops(rows, flops)
    assert ratios == pytest.approx([0.75, 0.75, 0.75])  # (1 / 2) / (1 / 1.5) at every target
    # one-off seconds (the reference) move the time, not the FLOPs
    once = speedups_at_uniform(u_time, frontier_costs(METHOD, 2.0, one_off=100.0))
    assert once[2]["speedup"] == pytest.approx(400 / 300)
    # a target the method never reaches: no seconds, no speed-up, no ratio
    short = speedups_at_uniform(u_time, frontier_costs([(50, 0.3)], 2.0))
    assert [r["bound"] for r in short] == [">", "–", "–"] and short[1]["speedup"] is None
    assert time_against_flops(short, short)[1:] == [None, None]
    with pytest.raises(ValueError):
        frontier_costs(UNIFORM, 0.0)


@pytest.fixture
def benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it reads benchmarks/frontier.py
    spec = importlib.util.spec_from_file_location("timing_benchmark",
                                                  ROOT / "benchmarks" / "timing.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "timing_benchmark", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "methods", lambda: {"uniform": None, "jest f=0.9": None})
    return module


def pool_point(budget, acc, train, score=0.0, ref=0.0):
    """A point of the frontier's payoff summary (TFLOPs)."""
    return {"budget": budget, "zero_shot": {"mean": acc}, "train": train, "learner_score": score,
            "reference": ref, "total": train + score + ref}  # fmt: skip


def test_the_summary_reads_measurements_and_the_frontier(benchmark):
    pools = {"web": {"methods": {
        "uniform": {"kind": "uniform", "points": [pool_point(b, a, b * 1e-12)
                                                  for b, a in UNIFORM]},
        "jest f=0.9": {"kind": "learnability", "points": [
            pool_point(b, a, b * 1e-12, b * 0.5e-12, 10e-12) for b, a in METHOD]},
    }}}  # fmt: skip

    def measured(name, repeat, step_seconds):
        t = timing({"data": [5.0] + [0.0] * 3, "forward_backward": [5.0] + [step_seconds] * 3})
        return {"name": name, "repeat": repeat, "timing": t,
                "flops_per_step": {"train": 1, "learner_score": None, "reference_score": None}}

    rows = []
    for r, jest in ((0, 2.0), (1, 4.0)):  # uniform 1 s a step, jest 2 s, then 4 s
        rows += [measured("uniform", r, 1.0), measured("jest f=0.9", r, jest),
                 measured("reference training", r, 0.5),
                 {"name": "reference pass", "repeat": r, "examples": 10, "pool_size": 100,
                  "seconds": {"cpu": 1.0, "wall": 2.0}}]  # fmt: skip
    s = benchmark.summarise(rows, pools, skip=1, reference_steps=10)
    assert s["phases"]["jest f=0.9"]["wall"]["step"]["mean"] == pytest.approx(3.0)
    assert s["phases"]["jest f=0.9"]["wall"]["step"]["std"] == pytest.approx(2**0.5)
    # one-off: 10 steps × 0.5 s + 100 examples × 0.1 s (CPU) = 15 s
    assert s["one_off"]["cpu"]["total"]["mean"] == pytest.approx(15.0)
    learner = s["reach"]["jest f=0.9"]["learner"]
    last = learner["cpu"][2]  # uniform's 400 steps: 400 s; jest: 100 steps × 2 or 4 s
    assert last["bound"] == "=" and last["seconds"]["mean"] == pytest.approx(300.0)
    assert last["speedup"]["mean"] == pytest.approx((2.0 + 1.0) / 2)
    assert learner["flops"][2]["speedup"] == pytest.approx(400 / 150)
    assert last["ratio"]["mean"] == pytest.approx(1.5 / (400 / 150))
    assert last["ratio"]["std"] > 0  # the repeats' spread
    total = s["reach"]["jest f=0.9"]["total"]["cpu"][2]  # + 15 s one-off, each repeat
    assert total["seconds"]["mean"] == pytest.approx(315.0)
    assert s["goal"] == {}  # no Flexi-JEST among these methods
    text = benchmark.table(s, {"before": "load 1", "after": "load 2"})
    assert "load 1" in text and "measured seconds per step × n" in text
