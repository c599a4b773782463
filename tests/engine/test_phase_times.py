"""Time by phase in every run: result.json's "timing" (jestkit.engine.timing) adds up to each
step's and the run's time; every phase of a JEST step is there, the scoring phases are not for
uniform; resume keeps one entry a step."""

import pytest
import torch
from helpers import MODEL, TINY

from jestkit.engine.loop import Trainer
from jestkit.engine.timing import PHASES, PhaseClock
from jestkit.fashion.evaluate import evaluator
from jestkit.fashion.reference import load_reference
from jestkit.models.factory import build_model

STEP_PHASES = ("data", "select", "forward_backward", "optimizer", "account")


def trainer(data, reference_dir, name, out):
    torch.manual_seed(0)
    model = build_model(MODEL, len(data.vocab), "sigmoid")
    config = TINY.with_name(name)  # 6 steps, evaluated and checkpointed every 3
    ref = load_reference(reference_dir, data, "sigmoid") if config.policy.uses_reference else None
    return Trainer(model, config, data.pool_source(), ref, evaluator(data), out, progress=False)


def check_adds_up(timing: dict, steps: int) -> None:
    for c in ("cpu", "wall"):
        per_step, total = timing["per_step"][c], timing["total"][c]
        assert set(per_step) == {*timing["phases"], "step"}
        assert all(len(v) == steps for v in per_step.values())
        phases = [sum(per_step[p][i] for p in timing["phases"]) for i in range(steps)]
        assert sum(phases) == pytest.approx(sum(per_step["step"]), rel=0.03), c
        assert all(p <= s * 1.0001 + 1e-6 for p, s in zip(phases, per_step["step"], strict=True))
        for p in timing["phases"]:  # the totals: the steps' (and the evaluation before them)
            if p != "evaluate":
                assert total[p] == pytest.approx(sum(per_step[p]), rel=1e-9), p
        before = total["evaluate"] - sum(per_step["evaluate"])  # step 0's evaluation
        assert before > 0
        assert total["step"] + before == pytest.approx(total["run"], rel=0.03), c
        assert sum(total[p] for p in timing["phases"]) == pytest.approx(total["run"], rel=0.03)


def test_every_phase_of_a_jest_step_adds_up_to_the_step(data, reference_dir, tmp_path):
    result = trainer(data, reference_dir, "learnability-joint", tmp_path / "jest").run()
    timing = result["timing"]
    assert timing["phases"] == list(PHASES)  # all of them, in the step's order
    check_adds_up(timing, 6)
    wall, cpu = timing["per_step"]["wall"], timing["per_step"]["cpu"]
    for p in ("learner_score", "select", "forward_backward"):
        assert all(s > 0 for s in wall[p]) and sum(cpu[p]) > 0, p
    evaluated = [i for i, s in enumerate(wall["evaluate"]) if s > 0]
    assert evaluated == [2, 5] and [i for i, s in enumerate(wall["checkpoint"]) if s > 0] == [2, 5]
    assert result["data_wait"] == wall["data"]  # the data wait is the data phase


def test_uniform_has_no_scoring_phases(data, reference_dir, tmp_path):
    result = trainer(data, reference_dir, "uniform", tmp_path / "uniform").run()
    timing = result["timing"]
    assert timing["phases"] == [*STEP_PHASES, "evaluate", "checkpoint"]
    check_adds_up(timing, 6)
    easy = trainer(data, reference_dir, "easy_reference-independent", tmp_path / "easy").run()
    assert "learner_score" not in easy["timing"]["phases"]
    assert "reference_score" in easy["timing"]["phases"]


def test_resume_keeps_one_entry_a_step(data, reference_dir, tmp_path):
    first = trainer(data, reference_dir, "learnability-joint", tmp_path / "r")
    first.run(stop_at=3)
    resumed = trainer(data, reference_dir, "learnability-joint", tmp_path / "r")
    assert resumed.resume()
    timing = resumed.run()["timing"]
    for c in ("cpu", "wall"):
        assert all(len(v) == 6 for v in timing["per_step"][c].values())
        steps = timing["per_step"][c]["step"]
        assert timing["total"][c]["step"] == pytest.approx(sum(steps), rel=1e-9)
    wall = timing["per_step"]["wall"]
    assert all(s > 0 for s in wall["learner_score"])  # the three steps before the resume too


def test_the_clock_refuses_an_unknown_phase():
    clock = PhaseClock()
    with pytest.raises(ValueError, match="unknown phase 'scoring'"), clock.phase("scoring"):
        pass


def test_a_phase_first_entered_later_is_zero_before():
    clock = PhaseClock()
    for i in range(3):
        clock.start_step()
        with clock.phase("data"):
            pass
        if i == 2:
            with clock.phase("checkpoint"):
                sum(range(10000))
        clock.end_step()
    per_step = clock.summary()["per_step"]["wall"]
    assert per_step["checkpoint"][:2] == [0.0, 0.0] and per_step["checkpoint"][2] > 0
    assert clock.last_step()["wall"]["checkpoint"] == per_step["checkpoint"][2]
