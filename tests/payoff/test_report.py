"""The demo's verdict: the run with the highest final accuracy and the one with the largest FLOP
saving, named from the rows, bounds kept."""

from jestkit.payoff.report import verdict


def row(acc: float, saving: float, bound: str = "=") -> dict:
    return {"final_zero_shot": acc, "speedup_flops": {"value": saving, "bound": bound}}


def test_verdict_names_the_most_accurate_and_the_cheapest_run():
    rows = {"learnability-joint": row(0.61, 1.1), "filter-30": row(0.72, 2.0, ">"),
            "flexi-learnability-joint": row(0.74, 1.5)}  # fmt: skip
    text = verdict(rows)
    assert "highest final zero-shot accuracy is flexi-learnability-joint's (0.7400)" in text
    assert "largest saving in FLOPs over uniform is filter-30's (> 2.00× fewer FLOPs" in text
    assert verdict({}) == "no selecting run to compare with uniform"
