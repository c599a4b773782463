"""Is `jestkit plan` right on own shards? The plan on the own-data benchmark's pool, checked
against that benchmark's measured runs.

For each budget (what a uniform run of N steps costs), it runs `jestkit plan` through the CLI on
benchmarks/own_data.py's shards, reference, score folder and held-out sets (OUT/plan-N, a plan
already written is read back), then reads the ground truth off the benchmark's runs, never
extrapolated: for each method the benchmark measured, its run with the most steps whose total
FLOPs (training and learner scoring, seed mean, plus the reference's training and pass where the
method uses the reference, as the plan charges it) fit the budget, and that run's held-out
zero-shot top-1 (mean ± std over its seeds; own_data.final_eval, the same prompts for every run).
The recommendation is a hit when its method's measured accuracy is within 0.01 of the best
measured method's. Methods the benchmark did not run (easy-reference, filter + JEST) cannot be
judged; a recommendation of one is reported as such.

    python benchmarks/own_data.py ...            # first: the runs (see its docstring)
    python benchmarks/plan_own_data.py [--out runs/own_data] [--budgets 600,1200]

Prints a table and writes benchmarks/results/plan_own_data.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from own_data import ZERO_SHOT, final_eval  # noqa: E402

from jestkit.cli import main as jestkit  # noqa: E402
from jestkit.plan.rules import METHODS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TOLERANCE = 0.01  # the issue's: within 0.01 of the best measured method
# the plan's methods -> the benchmark's run names (filter ratio: the plan's JEST is f 0.9, the
# benchmark's f 0.8) and whether the method uses the reference
MEASURED = {"uniform": ("uniform", False), "filter": ("filter", True),
            "jest": ("learnability-joint", True)}  # fmt: skip


def plan_argv(d: Path, budget: int, out: Path) -> list[str]:
    """The `jestkit plan` command on the benchmark's files, at a budget of `budget` uniform
    steps, with the benchmark's batch size and learning rate."""
    data = json.loads((d / "data.json").read_text())
    return ["plan", "--shards.pattern", data["pool"], "--open_clip", str(d / "tiny-sig.json"),
            "--reference", str(d / "score"), "--reference_checkpoint",
            str(d / "reference" / "checkpoint.pt"), "--eval.zeroshot", f"shapes={data['shapes']}",
            "--eval.retrieval", f"captions={data['captions']}", "--training.batch_size", "128",
            "--training.lr", "3e-3", "--budget_uniform_steps", str(budget), "--pilot_share",
            "0.01", "--out", str(out), "--quiet"]  # fmt: skip


def measured_runs(d: Path, prefix: str) -> dict[int, list[Path]]:
    """steps -> the seed folders of the benchmark's runs PREFIX-STEPS (PREFIX-STEPS-sN too)."""
    runs: dict[int, list[Path]] = {}
    for folder in sorted(d.glob(f"{prefix}-*")):
        steps = folder.name.removeprefix(f"{prefix}-").split("-s")[0]
        if steps.isdigit() and (folder / "result.json").is_file():
            runs.setdefault(int(steps), []).append(folder)
    return runs


def at_budget(d: Path, data: dict, prefix: str, charged: float, budget: float) -> dict | None:
    """The method's run with the most steps whose seed-mean total FLOPs (plus `charged`) fit the
    budget: its steps, FLOPs and accuracy (mean, std, per seed); None if none fits."""
    best = None
    for steps, folders in sorted(measured_runs(d, prefix).items()):
        flops = statistics.fmean(sum(json.loads((f / "result.json").read_text())["flops"].values())
                                 for f in folders) + charged  # fmt: skip
        if flops <= budget:
            accs = [final_eval(f, data)[ZERO_SHOT] for f in folders]
            best = {"steps": steps, "flops": flops, "seeds": accs, "mean": statistics.fmean(accs),
                    "std": statistics.stdev(accs) if len(accs) > 1 else 0.0}  # fmt: skip
    return best


def judge(d: Path, budget_steps: int) -> dict:
    out = d / f"plan-{budget_steps}"
    if not (out / "plan.json").is_file() and jestkit(plan_argv(d, budget_steps, out)) != 0:
        raise SystemExit(f"jestkit plan at {budget_steps} uniform steps failed")
    plan = json.loads((out / "plan.json").read_text())
    data = json.loads((d / "data.json").read_text())
    budget, reference = plan["budget_flops"], plan["reference_flops"]
    truth = {name: at_budget(d, data, prefix, reference if uses else 0.0, budget)
             for name, (prefix, uses) in MEASURED.items()}  # fmt: skip
    truth = {name: t for name, t in truth.items() if t is not None}
    # the plan's timed uniform step against the benchmark's uniform runs' median step (CPU s)
    steps = [s for f in measured_runs(d, "uniform").get(budget_steps, [])
             for s in json.loads((f / "result.json").read_text())["timing"]["per_step"]["cpu"][
                 "step"][2:]]  # fmt: skip
    step_check = {"plan": plan["time"]["methods"]["uniform"]["per_step"]["cpu"],
                  "runs": statistics.median(steps) if steps else None}  # fmt: skip
    best = max(truth, key=lambda n: truth[n]["mean"])
    rec = plan["recommended"]
    verdict = ("not measured" if rec not in truth else
               "hit" if truth[rec]["mean"] >= truth[best]["mean"] - TOLERANCE else "miss")
    return {"budget_uniform_steps": budget_steps, "budget_flops": budget,
            "reference_flops": reference, "recommended": rec,
            "steps": plan["methods"][rec]["steps"], "reasons": plan["reasons"],
            "plan_share": plan["plan_share"], "pilots": plan["pilots"], "measured": truth,
            "best": best, "verdict": verdict, "uniform_step_cpu": step_check,
            "command": "jestkit " + " ".join(plan_argv(d, budget_steps, Path("OUT")))}  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["jestkit plan on the own-data benchmark's pool, checked against its measured runs "
             "(held-out zero-shot top-1, mean ± std over seeds; TFLOPs: training + learner "
             "scoring, + the reference's training and pass for the methods that use it, as the "
             "plan charges it; each method's run with the most steps within the budget, never "
             f"extrapolated; hit: within {TOLERANCE} of the best measured)."]  # fmt: skip
    for r in rows:
        lines += ["", f"budget: uniform {r['budget_uniform_steps']} steps = "
                  f"{r['budget_flops'] / 1e12:.3f} TFLOPs; recommended: {r['recommended']} "
                  f"({r['steps']} steps); the plan cost {r['plan_share']:.2%} of the budget; "
                  f"{r['verdict'].upper()}", f"  because {'; '.join(r['reasons'])}"]  # fmt: skip
        for name, t in sorted(r["measured"].items(), key=lambda x: -x[1]["mean"]):
            seeds = " ".join(f"{a:.3f}" for a in t["seeds"])
            mark = "  <- best" if name == r["best"] else ""
            lines.append(f"  {name:<8} {t['steps']:>5} steps {t['flops'] / 1e12:>7.3f} TFLOPs  "
                         f"{t['mean']:.3f} ± {t['std']:.3f}  ({seeds}){mark}")  # fmt: skip
        check = r["uniform_step_cpu"]
        if check["runs"] is not None:
            lines.append(f"  time: the plan timed a uniform step at {check['plan']:.3f} CPU s; "
                         f"the benchmark's uniform-{r['budget_uniform_steps']} runs took "
                         f"{check['runs']:.3f} (median step after the first 2)")  # fmt: skip
        unmeasured = sorted(set(METHODS) - set(r["measured"]))
        lines.append(f"  not measured within the budget: {', '.join(unmeasured)}")
        lines.append(f"  {r['command']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/own_data", help="own_data.py's --out folder")
    parser.add_argument("--budgets", default="600,1200", help="uniform steps, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as own_data.py's runs: the plan times its steps as they ran
    d = Path(args.out)
    if not (d / "READY").is_file():
        raise SystemExit(f"{d} holds no own-data benchmark: run benchmarks/own_data.py first")
    rows = [judge(d, int(b)) for b in args.budgets.split(",")]
    text = table(rows)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "plan_own_data.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / "plan_own_data.txt").write_text(text + "\n")
    print(f"\nwrote {RESULTS}/plan_own_data.{{txt,json}}")


if __name__ == "__main__":
    main()
