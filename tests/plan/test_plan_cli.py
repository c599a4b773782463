"""`jestkit plan` end to end on a small pool: the table, plan.json and plan.png, the budget
in both forms, the errors, and pilots that an interrupted plan reads back."""

import json
import shlex

import pytest
from helpers import check_pilots, check_time

import jestkit.plan.fashion as plan_fashion
import jestkit.plan.run as plan_run
from jestkit.cli import main as cli_main

SMALL = ["--data.limit", "1500", "--data.curated_size", "400", "--model.dim", "32",
         "--model.depth", "1", "--model.text_depth", "1", "--model.heads", "2",
         "--model.embed_dim", "32", "--training.batch_size", "16", "--quiet"]  # fmt: skip


def test_plan_writes_its_table_and_files(reference_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "plan"
    code = cli_main(["plan", "--reference", str(reference_dir), "--budget_uniform_steps", "400",
                     "--pilot_share", "0", "--out", str(out), *SMALL])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert (out / "plan.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    assert plan["recommended"] in plan["methods"] and f"recommended: {plan['recommended']}" in text
    uniform = plan["methods"]["uniform"]
    assert uniform["steps"] == 400 and plan["budget_flops"] == pytest.approx(uniform["flops"])
    for name, m in plan["methods"].items():  # every method spends the budget, no more
        assert m["flops"] <= plan["budget_flops"] and m["steps"] >= 1, name
        assert m["flops"] + m["flops_per_step"] > plan["budget_flops"], name
    assert plan["methods"]["filter"]["keep"] == 0.3 and plan["methods"]["jest"]["filter_ratio"]
    assert 0 <= plan["measurements"]["matched_share"] <= 1
    assert plan["plan_flops"] > 0 and "the plan itself cost" in text
    check_time(plan, text)
    chosen = plan["methods"][plan["recommended"]]["commands"]
    assert len(chosen) == 1 and chosen[0] in text and "--training.steps" in chosen[0]
    assert "--filter_keep 0.3" in plan["methods"]["filter"]["commands"][0]
    monkeypatch.chdir(tmp_path)  # the recommendation runs as printed (here for 2 steps)
    assert cli_main([*shlex.split(chosen[0])[1:], "--training.steps", "2", "--quiet"]) == 0
    again = tmp_path / "flops"  # the same budget given as FLOPs: the same plan
    assert cli_main(["plan", "--reference", str(reference_dir), "--budget_flops",
                     str(plan["budget_flops"]), "--pilot_share", "0", "--out", str(again),
                     *SMALL]) == 0  # fmt: skip
    same = json.loads((again / "plan.json").read_text())
    assert same["methods"] == plan["methods"] and same["recommended"] == plan["recommended"]
    # the budget in machine-hours: about what this plan's uniform run would take; every method
    # then spends it in wall seconds as that plan timed its steps
    hours = plan["time"]["methods"]["uniform"]["total"]["wall"] / 3600
    timed = tmp_path / "hours"
    assert cli_main(["plan", "--reference", str(reference_dir), "--budget_hours", f"{hours:.6g}",
                     "--pilot_share", "0", "--out", str(timed), *SMALL]) == 0  # fmt: skip
    text = capsys.readouterr().out
    by_time = json.loads((timed / "plan.json").read_text())
    assert by_time["budget_hours"] == float(f"{hours:.6g}") and by_time["budget_flops"] is None
    assert "machine-hours" in text and set(by_time["methods"]) == set(plan["methods"])
    for name, m in by_time["methods"].items():
        t = by_time["time"]["methods"][name]
        assert t["total"]["wall"] <= hours * 3600 < t["total"]["wall"] + t["per_step"]["wall"]
        assert m["flops"] == pytest.approx(m["flops_split"]["reference"] + m["steps"] *
                                           m["flops_per_step"])  # its FLOPs at those steps


@pytest.mark.parametrize("flags, message", [
    ([], "give the budget once"),
    (["--budget_flops", "1e12", "--budget_uniform_steps", "5"], "give the budget once"),
    (["--budget_flops", "-1"], "--budget_flops must be > 0"),
    (["--budget_hours", "0"], "--budget_hours must be > 0"),
    (["--budget_hours", "1", "--budget_uniform_steps", "5"], "give the budget once"),
    (["--budget_hours", "1e-9"], "does not buy one uniform step"),
    (["--budget_uniform_steps", "400", "--reference", "nowhere"], "holds no reference"),
    (["--budget_flops", "1e6"], "does not buy one uniform step"),
    (["--budget_uniform_steps", "2"], "smaller than the plan's own measurements"),
    (["--budget_uniform_steps", "400", "--pilot_share", "0.9", "--rules.margin", "0.99"],
     "the pilots"),
])  # fmt: skip
def test_plan_errors_are_clear(reference_dir, tmp_path, capsys, flags, message):
    argv = ["plan", "--reference", str(reference_dir), "--out", str(tmp_path / "p"), *SMALL]
    assert cli_main(argv + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("jestkit plan: error:") and message in err, err


def test_pilots_run_where_undecided_and_resume_from_cache(reference_dir, tmp_path, capsys,
                                                          monkeypatch):  # fmt: skip
    out = tmp_path / "plan"
    argv = ["plan", "--reference", str(reference_dir), "--budget_uniform_steps", "1000",
            "--pilot_share", "0.01", "--rules.margin", "0.99", "--out", str(out),
            *SMALL]  # fmt: skip  (margin 0.99: the rules never decide, pilots do)
    assert cli_main(argv) == 0, capsys.readouterr().err
    plan = json.loads((out / "plan.json").read_text())
    check_pilots(plan)

    def no_training(*args, **kwargs):
        raise AssertionError("a pilot ran again although its result was cached")

    monkeypatch.setattr(plan_fashion, "train_learner", no_training)
    assert cli_main(argv) == 0  # interrupted after its pilots: they are read back
    assert json.loads((out / "plan.json").read_text())["pilots"] == plan["pilots"]


def test_pilot_interval_is_bounded_by_the_gain_stopping_and_going_on():
    low, high = plan_run.pilot_interval(50, 0.5, 100, 0.6, 400)
    assert low == 0.6 and high == pytest.approx(0.8)  # two more doublings at +0.1 each
    assert plan_run.pilot_interval(50, 0.6, 100, 0.5, 400) == pytest.approx((0.3, 0.5))
    with pytest.raises(ValueError):
        plan_run.pilot_interval(100, 0.5, 50, 0.6, 400)
