"""`jestkit plan`: measure, decide, pilot where undecided, and write OUT/plan.json and
OUT/plan.png, on any pool behind the pool interface (`PlanPool`): the Fashion-MNIST caption
pool with a reference folder (jestkit.plan.fashion) or your own shards with a `jestkit score`
folder and held-out sets (jestkit.plan.shards). The decision, pilots, intervals and table are
this module's, the same for both.

Pilots (only for the methods the rules could not separate, and only with pilot_share > 0): each
such method runs twice, at s and 2s steps (s from pilot_share of its budget-spending steps),
each run with its own schedule as the frontier's are. Its accuracy at the intended steps S is
then an interval, never a point: from the 2s run's accuracy (the gain stops there) to the line
through both runs in log steps carried on to S (the gain per doubling goes on as measured;
learning curves bend down, so this is the optimistic end). Each pilot is a run folder under
OUT/pilots/ and is read back when it is done: an interrupted plan resumes its pilots.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Protocol

from jestkit.engine.config import TrainConfig
from jestkit.engine.files import save_png, write_json_atomic
from jestkit.plan.rules import (
    MethodCost,
    PlanRules,
    at_steps,
    decide,
    method_config,
    settings,
)


class PlanPool(Protocol):
    """What the plan needs of a pool: its checks, its measurements (jestkit.plan.measure's, with
    'pool_size', 'kept', 'reference_flops' and their own cost 'flops'), each method's FLOPs per
    step, a method's run (result.json's contents, for the pilots), a run's held-out accuracy,
    and the commands that run a method as the plan recommends it."""

    def check(self) -> None: ...

    def measure(self) -> dict: ...

    def step_costs(self, base: TrainConfig) -> tuple[dict[str, MethodCost], float]: ...

    def train(self, name: str, config: TrainConfig, run_dir: Path, resume: bool,
              progress: bool) -> dict: ...  # fmt: skip

    def accuracy(self, result: dict) -> float: ...

    def commands(self, name: str, config: TrainConfig) -> list[str]: ...


def check_budget(flops: float | None, uniform_steps: int | None, hours: float | None) -> None:
    """Refuse a budget given not exactly once, or out of range."""
    if sum(x is not None for x in (flops, uniform_steps, hours)) != 1:
        raise ValueError("give the budget once: --budget_flops F (total FLOPs), "
                         "--budget_uniform_steps N (what a uniform run of N steps costs) or "
                         "--budget_hours H (machine-hours: wall time on this machine)")
    if flops is not None and not flops > 0:
        raise ValueError(f"--budget_flops must be > 0, got {flops:g}")
    if uniform_steps is not None and uniform_steps < 1:
        raise ValueError(f"--budget_uniform_steps must be >= 1, got {uniform_steps}")
    if hours is not None and not 0 < hours < math.inf:
        raise ValueError(f"--budget_hours must be > 0, got {hours:g}")


def budget_flops(flops: float | None, uniform_steps: int | None, uniform_per_step: float) -> float:
    """The budget in FLOPs: given, or what a uniform run of `uniform_steps` costs."""
    check_budget(flops, uniform_steps, None)
    return float(flops) if flops is not None else uniform_steps * uniform_per_step


def _once_seconds(cost: MethodCost, m: dict, clock: str) -> float:
    """A method's one-off pass (its `fixed` FLOPs) in seconds, at the reference pass's rate."""
    ref = m.get("reference_seconds") or {}
    if not cost.fixed or not ref.get("pass") or not m.get("reference_pass_flops"):
        return 0.0
    return ref["pass"][clock] * cost.fixed / m["reference_pass_flops"]


def wall_costs(costs: dict[str, MethodCost], m: dict) -> tuple[dict[str, MethodCost], float]:
    """The methods' costs in wall seconds on this machine (for a budget in machine-hours): each
    a step's wall time, its one-off pass, and the reference's training and pass."""
    total = (m.get("reference_seconds") or {}).get("total")
    if total is None and any(c.uses_reference for c in costs.values()):
        raise ValueError("--budget_hours needs the reference's training time, which its record "
                         "does not hold (a reference built elsewhere, or before jestkit recorded "
                         "it): give the budget as --budget_flops or --budget_uniform_steps")
    return {n: MethodCost(c.seconds["wall"], 0.0, c.uses_reference, _once_seconds(c, m, "wall"),
                          c.seconds) for n, c in costs.items()}, (total or {"wall": 0.0})["wall"]


def pilot_interval(s1: int, a1: float, s2: int, a2: float, target: int) -> tuple[float, float]:
    """(low, high) accuracy at `target` steps from runs of s1 < s2 <= target steps: the gain
    stopping at s2, and the line through both in log steps carried on to target."""
    if not 0 < s1 < s2 <= target:
        raise ValueError(f"need 0 < s1 < s2 <= target, got {s1}, {s2}, {target}")
    carried = a2 + (a2 - a1) / math.log(s2 / s1) * math.log(target / s2)
    return min(a2, carried), max(a2, carried)


def plan(pool: PlanPool, base: TrainConfig, out: str | os.PathLike, flops: float | None = None,
         uniform_steps: int | None = None, rules: PlanRules | None = None,
         pilot_share: float = 0.0, progress: bool = False,
         hours: float | None = None) -> dict:  # fmt: skip
    """The plan (see the module docstring); also written to out/plan.json and out/plan.png.
    The budget: `flops`, `uniform_steps` (what a uniform run of that many steps costs) or
    `hours` (machine-hours: every cost in wall seconds measured here, jestkit.plan.costs)."""
    started = {"cpu": time.process_time(), "wall": time.perf_counter()}  # the plan's own time
    check_budget(flops, uniform_steps, hours)  # before any work
    rules = rules or PlanRules()
    if not 0 <= pilot_share < 1:
        raise ValueError(f"--pilot_share must be in [0, 1), got {pilot_share:g}")
    pool.check()
    out = Path(out)
    m = pool.measure()
    costs, cost_flops = pool.step_costs(base)
    if hours is None:  # every cost in FLOPs
        budget, unit = budget_flops(flops, uniform_steps, costs["uniform"].per_step), "FLOPs"
        unit_costs, unit_reference = costs, m["reference_flops"]
        own = m["flops"] + cost_flops
    else:  # every cost in wall seconds on this machine
        budget, unit = hours * 3600.0, "wall seconds"
        unit_costs, unit_reference = wall_costs(costs, m)
        own = time.perf_counter() - started["wall"]
    batch = base.training.batch_size
    spend = settings(unit_costs, unit_reference, budget, batch, m["pool_size"])
    if "uniform" not in spend:
        raise ValueError(f"a budget of {budget:.3g} {unit} does not buy one uniform step")
    if own >= budget:
        raise ValueError(f"a budget of {budget:.3g} {unit} is smaller than the plan's own "
                         f"measurements ({own:.3g} {unit}): nothing to plan")
    if hours is not None:  # the same steps, their FLOPs
        spend = {n: at_steps(n, costs[n], m["reference_flops"], s.steps, batch, m["pool_size"])
                 for n, s in spend.items()}  # fmt: skip
    revisits = spend["filter"].revisits if "filter" in spend else math.inf
    d = decide(m["matched_share"], min(unit_reference / budget, 1.0), revisits, rules)
    runnable(d, spend)
    pilots, pilot_flops = {}, 0.0
    if d.undecided and pilot_share > 0:
        pilot_cost = sum(3 * max(2, round(pilot_share * spend[n].steps))
                         * unit_costs[n].per_step + unit_costs[n].fixed
                         for n in d.undecided if n in spend)  # fmt: skip
        if pilot_cost >= budget:
            raise ValueError(f"the pilots ({pilot_cost:.3g} {unit}) cost more than the budget "
                             f"({budget:.3g}): lower --pilot_share or raise the budget")
        for name in d.undecided:
            if name in spend:
                pilots[name], spent = _pilot(pool, base, out, name, spend[name].steps,
                                             pilot_share, progress)  # fmt: skip
                pilot_flops += spent
        ranked = sorted(pilots, key=lambda n: -sum(pilots[n]["interval"]) / 2)
        if ranked:
            d.method = ranked[0]
            d.reasons.append(f"pilots: {ranked[0]}'s interval lies highest (by its middle)")
    plan_flops = m["flops"] + cost_flops + pilot_flops
    plan_seconds = {"cpu": time.process_time() - started["cpu"],
                    "wall": time.perf_counter() - started["wall"]}  # fmt: skip
    result = {
        "budget_flops": budget if hours is None else None,
        "budget_hours": hours,
        "measurements": m,
        "rules": asdict(rules),
        "methods": {n: {**asdict(s), "flops_per_step": costs[n].per_step,
                        "flops_split": {
                            "reference": (m["reference_flops"] if costs[n].uses_reference
                                          else 0) + costs[n].fixed,
                            "train": s.steps * costs[n].train,
                            "learner_score": s.steps * costs[n].score},
                        "predicted_accuracy": pilots.get(n, {}).get("interval"),
                        "commands": pool.commands(n, method_config(base, n, s.steps))}
                    for n, s in spend.items()},  # fmt: skip
        "recommended": d.method,
        "reasons": d.reasons,
        "undecided": d.undecided,
        "pilots": pilots,
        "plan_flops": plan_flops,
        "plan_share": (plan_flops if hours is None else plan_seconds["wall"]) / budget,
        "reference_flops": m["reference_flops"],
        "time": predicted_seconds(spend, costs, m) | {"plan": plan_seconds},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, out / "plan.json")
    plot_plan(result, out / "plan.png")
    return result


def predicted_seconds(spend: dict, costs: dict[str, MethodCost], m: dict) -> dict:
    """Each method's seconds on this machine {"cpu", "wall"} at the steps that spend the budget:
    its steps at its measured step time, plus the reference (training and pass over the pool,
    measurements' 'reference_seconds') where it uses it, plus its one-off pass (`fixed`, at the
    reference pass's seconds per FLOP). 'total' is None where the reference's training time is
    not on record; 'steps' is there either way."""
    ref = m.get("reference_seconds") or {"total": None, "pass": None}
    methods = {}
    for n, s in spend.items():
        step = costs[n].seconds
        if step is None:
            continue
        steps = {k: s.steps * v for k, v in step.items()}
        once = {k: _once_seconds(costs[n], m, k) for k in step}
        if costs[n].uses_reference:
            total = None if ref["total"] is None else {
                k: steps[k] + once[k] + ref["total"][k] for k in step}  # fmt: skip
        else:
            total = {k: steps[k] + once[k] for k in step}
        methods[n] = {"per_step": step, "steps": steps, "total": total}
    return {"unit": "seconds on this machine", "reference": m.get("reference_seconds"),
            "methods": methods}  # fmt: skip


def duration(seconds: float | None) -> str:
    """Seconds as a person reads them: '42 s', '12.5 min', '3.1 h' ('?' for None)."""
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# where the rules' answer cannot run (left out, or the budget buys none of its steps): the
# next method down, each using less of the reference than the one before
FALLBACK = ("jest", "easy", "filter", "uniform")


def runnable(d, spend: dict) -> None:
    """Move decision `d` to a method of `spend` (the methods the budget runs): the rules' own
    answer, or the next one down FALLBACK, saying why; the undecided ones not in spend are
    dropped."""
    if d.method not in spend:
        start = FALLBACK.index(d.method) if d.method in FALLBACK else 0
        instead = next(n for n in FALLBACK[start:] if n in spend)
        d.reasons.append(f"{d.method} cannot run on this pool at this budget: {instead} instead")
        d.method = instead
    d.undecided = [n for n in d.undecided if n in spend]
    if len(d.undecided) < 2:
        d.undecided = []


def _pilot(pool: PlanPool, base: TrainConfig, out: Path, name: str, steps: int, share: float,
           progress: bool) -> tuple[dict, float]:  # fmt: skip
    """A method's two pilot runs (s and 2s steps), read back when done; (summary, FLOPs)."""
    s2 = max(2, round(share * steps))
    s1 = max(1, s2 // 2)
    accs, spent = {}, 0.0
    for s in (s1, s2):
        config = method_config(base, name, s)
        config = replace(config, training=replace(config.training, eval_every=None,
                                                  warmup_steps=min(20, s // 5)))  # fmt: skip
        run = out / "pilots" / f"{name.replace('+', '-')}-{s}"
        done = run / "result.json"
        if done.is_file():  # a pilot of an interrupted plan, done before
            result = json.loads(done.read_text())
        else:
            result = pool.train(name, config, run, (run / "checkpoint.pt").exists(), progress)
        accs[s] = pool.accuracy(result)
        spent += sum(result["flops"].values())
    return {"steps": [s1, s2], "accuracy": [accs[s1], accs[s2]],
            "interval": pilot_interval(s1, accs[s1], s2, accs[s2], max(s2, steps))}, spent


def table(result: dict) -> str:
    """The plan as text: a row per method at the settings that spend the budget."""
    b, hours = result["budget_flops"], result.get("budget_hours")
    m = result["measurements"]
    budget = (f"{b / 1e12:.3f} TFLOPs" if hours is None else
              f"{hours:g} machine-hours (wall time on this machine)")  # fmt: skip
    lines = [f"budget {budget}; the reference (training + its pass over the pool) "
             f"{result['reference_flops'] / 1e12:.3f} TFLOPs, charged to the methods that use it",
             f"measured: matched share {m['matched_share']:.3f}, the filter's kept share "
             f"{m['kept']} pairs (estimated {m['kept_precision']:.0%} matched), near-duplicates "
             f"{m['near_duplicate_share']:.1%}" + _concepts(m), ""]  # fmt: skip
    head = (f"{'method':<13}{'steps':>7}{'f':>5}{'keep':>6}{'revisits':>9}{'TFLOPs':>9}"
            f"{'wall time':>11}{'predicted accuracy':>22}")  # fmt: skip
    lines += [head, "-" * len(head)]
    for name, s in result["methods"].items():
        acc = s["predicted_accuracy"]
        acc = "– (no pilot)" if acc is None else f"{acc[0]:.3f} .. {acc[1]:.3f}"
        mark = "  <- recommended" if name == result["recommended"] else ""
        f = "-" if s["filter_ratio"] is None else f"{s['filter_ratio']:g}"
        keep = "-" if s["keep"] is None else f"{s['keep']:g}"
        rev = "-" if s["revisits"] is None else f"{s['revisits']:.1f}"
        t = result["time"]["methods"].get(name, {}).get("total")
        lines.append(f"{name:<13}{s['steps']:>7}{f:>5}{keep:>6}{rev:>9}{s['flops'] / 1e12:>9.3f}"
                     f"{duration(t and t['wall']):>11}{acc:>22}{mark}")  # fmt: skip
    lines += ["", f"recommended: {result['recommended']}"]
    lines += [f"  because {r}" for r in result["reasons"]]
    for name, why in m.get("left_out", {}).items():
        lines.append(f"  {name} was left out: {why}")
    if result["undecided"]:
        lines.append(f"  the measurements could not separate {' and '.join(result['undecided'])}"
                     + ("; pilots ran" if result["pilots"] else "; no pilots (--pilot_share 0)"))
    lines.append("run it with:")
    lines += [f"  {c}" for c in result["methods"][result["recommended"]]["commands"]]
    lines.append(f"the plan itself cost {result['plan_flops'] / 1e12:.4f} TFLOPs "
                 f"({result['plan_share']:.2%} of the budget) and "
                 f"{duration(result['time']['plan']['wall'])} of wall time")  # fmt: skip
    ref = result["time"]["reference"]
    if ref is not None:
        lines.append(_reference_time(ref))
    return "\n".join(lines)


def _reference_time(ref: dict) -> str:
    """How the wall-time column counts the reference."""
    text = (f"wall time: each method's steps at its measured step time on this machine, plus, "
            f"where it uses the reference, its pass over the pool ({duration(ref['pass']['wall'])}"
            f", timed on held-out pairs)")  # fmt: skip
    if ref["train"] is None:
        return text + " and its training, whose time is not on record ('?')"
    return text + f" and its training ({duration(ref['train']['wall'])}, its record)"


def _concepts(m: dict) -> str:
    """The class entropies of the pool and of the filter's kept share ('' without classes)."""
    if m["concepts_pool"] is None:
        return ""
    return (f", class entropy {m['concepts_pool']['entropy']:.3f} (kept "
            f"{m['concepts_kept']['entropy']:.3f})")  # fmt: skip


def plot_plan(result: dict, path: Path) -> None:
    """Where each method's budget goes (the reference, training, the learner's scoring), its
    steps, and the pilots' accuracy intervals where pilots ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["methods"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    left = [0.0] * len(names)
    for part, colour in (("reference", "tab:orange"), ("train", "tab:blue"),
                         ("learner_score", "tab:purple")):  # fmt: skip
        widths = [result["methods"][n]["flops_split"][part] / 1e12 for n in names]
        ax.barh(names, widths, left=left, color=colour, label=part)
        left = [a + w for a, w in zip(left, widths, strict=True)]
    if result["budget_flops"] is not None:  # a budget in machine-hours has no line here
        ax.axvline(result["budget_flops"] / 1e12, color="k", lw=1, ls="--", label="budget")
    ax.set_xlabel("TFLOPs at the steps that spend the budget")
    ax.set_title(f"recommended: {result['recommended']}")
    ax.legend(fontsize=7, loc="lower right")
    for i, n in enumerate(names):
        m = result["methods"][n]
        acc = m["predicted_accuracy"]
        if acc is not None:
            bx.plot(acc, [i, i], "-", lw=5, color="tab:green" if n == result["recommended"]
                    else "tab:grey")  # fmt: skip
        label = f"{m['steps']} steps" + ("" if m["revisits"] is None
                                         else f", revisits {m['revisits']:.1f}")  # fmt: skip
        bx.annotate(label, (0.01, i), xycoords=("axes fraction", "data"), fontsize=7,
                    va="center")  # fmt: skip
    bx.set_yticks(range(len(names)), names)
    bx.set_xlim(0, 1)
    bx.set_ylim(-0.5, len(names) - 0.5)
    bx.set_xlabel("predicted held-out accuracy at the budget (pilots' interval)")
    bx.set_title("pilots" if result["pilots"] else "no pilots ran (the rules decided)")
    fig.tight_layout()
    save_png(fig, path, dpi=110)
