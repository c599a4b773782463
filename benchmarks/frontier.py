"""The payoff of JEST on a budget-matched frontier, the way the paper measures it.

Every policy is trained at several budgets (steps), each run with its own warm-up + cosine
schedule that ends at its budget, and only each run's final zero-shot accuracy is kept. A
policy run's speed-up is uniform's cost (FLOPs, steps, training seconds) to reach the same
accuracy, read off uniform's frontier by interpolation in log cost (jestkit.frontier), over the
run's own. Where uniform's largest budget never gets there the speed-up is a lower bound
("> k×"), never an extrapolation.

The axes: the pool's clean share (`--pools`: default 50 %, quarter 25 %, web 15 % clean), the
filter ratio, the reference's strength, and the policy variant:

    uniform      b of the pool at random, no scoring
    jest         learnability-joint, scoring at full resolution
    flexi        Flexi-JEST's image view only: the image tower scores at patch 14 (4 tokens
                 instead of 16) and half of each sub-batch trains at patch 14
    flexi-text   flexi, and the text tower scores half of each caption's positions (pads
                 first): what the `flexi-` run names now mean, kept because it measured better

Learning rate: at one budget per pool (uniform 400 steps, JEST 100 steps) a 3-point grid
{1e-3, 2e-3, 4e-3} is run for uniform and for jest; the best of each is then used for every
budget of that family (flexi variants use jest's). FLOPs are measured with
torch.utils.flop_counter (training + learner scoring; the reference reads its cache). The
reference's own training and cache build are reported apart, and also charged in full to one
learner ("with reference" columns: the worst case, no amortisation).

Every run is cached as one JSON file under benchmarks/results/frontier/ and read back, so the
grid resumes where it stopped (a run killed midway resumes from its checkpoint under --work).
Runs are taken by --workers processes (one thread each) that claim tasks with lock files.

    python benchmarks/frontier.py run --plan decisive --workers 2   # the goal cells first
    python benchmarks/frontier.py run --plan seeds --workers 2      # seeds 1, 2 of headlines
    python benchmarks/frontier.py run --plan ratios --workers 2     # filter ratios 0.5 to 0.9
    python benchmarks/frontier.py run --plan axes --workers 2       # a 25 %-clean pool, a
                                                                    # stronger reference
    python benchmarks/frontier.py summary                           # table, JSON, plot

`summary` (also run at the end of `run`) writes benchmarks/results/frontier.json, frontier.txt
and frontier.png from whatever runs exist.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from jestkit.engine.config import TrainConfig, reference_training
from jestkit.fashion.captions import PoolConfig
from jestkit.fashion.evaluate import evaluator
from jestkit.fashion.learner import train_learner
from jestkit.fashion.prepare import CaptionData, prepare_caption_data
from jestkit.fashion.reference import train_reference
from jestkit.models.factory import ModelConfig
from jestkit.payoff.frontier import Speedup, speedup
from jestkit.payoff.report import COSTS, run_cost, uniform_frontier

RESULTS = Path("benchmarks/results")
RUNS = RESULTS / "frontier"
LRS = (1e-3, 2e-3, 4e-3)
TUNE_BUDGET = {"uniform": 400, "jest": 100}
TUNE_RATIO = {"default": 0.8, "quarter": 0.8, "web": 0.9}  # jest's grid: one ratio per pool

POOLS = {  # name -> (pool config, clean share)
    "default": PoolConfig(),  # 25 % mismatched, 15 % junk, 10 % near-duplicates
    "quarter": PoolConfig(mismatched_rate=0.40, junk_rate=0.25, duplicate_rate=0.10),
    "web": PoolConfig(mismatched_rate=0.50, junk_rate=0.30, duplicate_rate=0.05),
}
REFERENCES = {"default": {"steps": 300}, "strong": {"steps": 1200}}
VARIANTS = {  # name -> (the run name, ScoringConfig fields)
    "uniform": ("uniform", {}),
    "jest": ("learnability-joint", {}),
    "flexi": ("flexi-learnability-joint", {"text_token_drop": 0.0}),  # the image view only
    "flexi-text": ("flexi-learnability-joint", {"text_token_drop": 0.5}),
}
UNIFORM_BUDGETS = (100, 200, 400, 800, 1600, 3200)
JEST_BUDGETS = (50, 100, 200, 400)
PLOT_BUDGET = 100  # the JEST budget run in every cell: the pool-quality plot reads it


def clean_share(pool: PoolConfig) -> float:
    return 1.0 - pool.mismatched_rate - pool.junk_rate - pool.duplicate_rate


@dataclass(frozen=True)
class Run:
    """One learner run (or, with variant 'reference', one reference build)."""

    pool: str
    variant: str
    budget: int
    ratio: float = 0.8
    reference: str = "default"
    lr: float | None = None  # None: the tuned learning rate of the variant's family
    seed: int = 0

    @property
    def family(self) -> str:
        return "uniform" if self.variant == "uniform" else "jest"

    def key(self) -> str:
        if self.variant == "reference":
            return f"reference_{self.pool}_{self.reference}"
        ratio = "-" if self.variant == "uniform" else f"{self.ratio:g}"
        return (
            f"{self.pool}_{self.reference}_{ratio}_{self.variant}_{self.budget}_"
            f"lr{self.lr:g}_s{self.seed}"
        )


def ref_task(pool: str, reference: str = "default") -> Run:
    return Run(pool, "reference", REFERENCES[reference]["steps"], reference=reference)


def cells(pool, ratio, variants, reference="default", seeds=(0,), uniform_budgets=UNIFORM_BUDGETS,
          jest_budgets=JEST_BUDGETS) -> list[Run]:
    """Every budget of every variant of one (pool, filter ratio, reference) cell."""
    out = []
    for seed in seeds:
        for v in variants:
            budgets = uniform_budgets if v == "uniform" else jest_budgets
            out += [Run(pool, v, n, ratio, reference, None, seed) for n in budgets]
    return out


def tuning(pool: str) -> list[Run]:
    return [
        Run(pool, v, TUNE_BUDGET[v], TUNE_RATIO[pool], "default", lr)
        for v in ("uniform", "jest")
        for lr in LRS
    ]


PLANS = {
    # the goals: web-like pool at filter ratio 0.9, default pool at 0.8
    "decisive": [
        [ref_task("web"), ref_task("default")],
        tuning("web") + tuning("default"),
        cells("web", 0.9, ("uniform", "flexi", "jest"))
        + cells("default", 0.8, ("uniform", "flexi", "jest"), uniform_budgets=UNIFORM_BUDGETS[:-1],
                jest_budgets=JEST_BUDGETS[:-1])
        + cells("web", 0.9, ("flexi-text",), jest_budgets=(100, 200))
        + cells("default", 0.8, ("flexi-text",), jest_budgets=(100, 200)),
    ],
    # seeds 1 and 2 of the headline cells (read against the seed-averaged uniform frontier)
    "seeds": [
        [],
        [],
        cells("web", 0.9, ("jest",), seeds=(1, 2), jest_budgets=(200,))
        + cells("web", 0.9, ("flexi",), seeds=(1, 2), jest_budgets=(100,))
        + cells("default", 0.8, ("jest", "flexi"), seeds=(1, 2), jest_budgets=(100,))
        + cells("web", 0.9, ("uniform",), seeds=(1, 2), uniform_budgets=(400,))
        + cells("default", 0.8, ("uniform",), seeds=(1, 2), uniform_budgets=(400,)),
    ],
    # the filter-ratio axis on the two pools above, at 100 steps
    "ratios": [
        [],
        [],
        cells("web", 0.8, ("flexi", "jest"), jest_budgets=(100,))
        + cells("default", 0.9, ("flexi", "jest"), jest_budgets=(100,))
        + cells("web", 0.5, ("flexi", "jest"), jest_budgets=(100,))
        + cells("default", 0.5, ("flexi", "jest"), jest_budgets=(100,)),
    ],
    # a third pool quality (25 % clean), and a reference trained 4x longer
    "axes": [
        [ref_task("quarter"), ref_task("web", "strong")],
        tuning("quarter"),
        cells("quarter", 0.8, ("uniform",), uniform_budgets=(100, 200, 800, 1600))
        + cells("quarter", 0.8, ("flexi", "jest"), jest_budgets=(100,))
        + cells("web", 0.9, ("flexi", "jest"), reference="strong", jest_budgets=(100,))
        + cells("quarter", 0.9, ("flexi",), jest_budgets=(100,))
        + cells("quarter", 0.5, ("flexi",), jest_budgets=(100,)),
    ],
}


# -- the run cache ----------------------------------------------------------------------------
def result_path(run: Run) -> Path:
    return RUNS / f"{run.key()}.json"


def load_results() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))}


def tuned_lr(run: Run, results: dict[str, dict]) -> float | None:
    """The best learning rate of the grid of this run's pool and family (uniform or JEST; JEST's
    grid is run at one filter ratio per pool with the default reference), or None while the
    grid is incomplete."""
    scores = {}
    for lr in LRS:
        probe = Run(run.pool, run.family, TUNE_BUDGET[run.family], TUNE_RATIO[run.pool],
                    "default", lr)
        got = results.get(probe.key())
        if got is None:
            return None
        scores[lr] = got["final"]["zero_shot"]
    return max(scores, key=scores.get)


def _claim(path: Path) -> bool:
    """Take the lock file of a run (stale locks of dead processes are taken over)."""
    lock = path.with_suffix(".lock")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            lock.unlink(missing_ok=True)
            return _claim(path)
        except PermissionError:
            return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


# -- running one task ---------------------------------------------------------------------------
class Worker:
    """Runs tasks in one process, keeping each pool's data in memory."""

    def __init__(self, work: Path, limit: int | None):
        self.work, self.limit = work, limit
        self.data: dict[str, CaptionData] = {}

    def pool_data(self, pool: str) -> CaptionData:
        if pool not in self.data:
            self.data[pool] = prepare_caption_data(replace(POOLS[pool], limit=self.limit))
        return self.data[pool]

    def ref_dir(self, run: Run) -> Path:
        return self.work / f"reference_{run.pool}_{run.reference}"

    def reference(self, run: Run) -> dict:
        data = self.pool_data(run.pool)
        start = time.perf_counter()
        config = replace(reference_training(), **REFERENCES[run.reference])
        info = train_reference(data, ModelConfig(), config, "sigmoid", self.ref_dir(run),
                               evaluate=evaluator(data), progress=False,
                               overwrite=True)  # fmt: skip
        return {"run": asdict(run), **info, "wall_seconds": time.perf_counter() - start}

    def learner(self, run: Run) -> dict:
        name, scoring = VARIANTS[run.variant]
        base = TrainConfig().with_name(name)
        config = replace(
            base,
            selection=replace(base.selection, filter_ratio=run.ratio),
            scoring=replace(base.scoring, **scoring),
            training=replace(
                base.training,
                steps=run.budget,
                lr=run.lr,
                seed=run.seed,
                warmup_steps=min(20, run.budget // 5),
                eval_every=None,  # each budget is one final point of the frontier
                checkpoint_every=200,
            ),
        )
        ref_dir = self.ref_dir(run) if config.policy.uses_reference else None
        out = self.work / run.key()  # a killed run resumes from its checkpoint
        result = train_learner(self.pool_data(run.pool), ModelConfig(), config, ref_dir, out,
                               resume=(out / "checkpoint.pt").exists(), progress=False)  # fmt: skip
        result.pop("config")
        return {"run": asdict(run), "config": asdict(config), **result,
                "total_flops": sum(result["flops"].values())}  # fmt: skip


def work(plan: str, phase: int, worker_id: int, args) -> None:
    torch.set_num_threads(1)
    worker = Worker(Path(args.work), args.limit)
    for run in PLANS[plan][phase]:
        results = load_results()
        if run.variant != "reference" and run.lr is None:
            lr = tuned_lr(run, results)
            if lr is None:
                print(f"[{worker_id}] skip {run.key()}: its learning-rate grid is not done")
                continue
            run = replace(run, lr=lr)
        path = result_path(run)
        if path.exists() or not _claim(path):
            continue
        try:
            start = time.perf_counter()
            print(f"[{worker_id}] {run.key()} ...", flush=True)
            out = worker.reference(run) if run.variant == "reference" else worker.learner(run)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=1))
            os.replace(tmp, path)
            acc = out["final"].get("zero_shot", float("nan"))
            print(f"[{worker_id}] {run.key()}: zero-shot {acc:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        finally:
            path.with_suffix(".lock").unlink(missing_ok=True)


def run_plan(args) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    for phase in range(len(PLANS[args.plan])):
        if not PLANS[args.plan][phase]:
            continue
        print(f"plan {args.plan}, phase {phase}: {len(PLANS[args.plan][phase])} tasks", flush=True)
        cmd = [sys.executable, __file__, "work", "--plan", args.plan, "--phase", str(phase),
               "--work", args.work] + (["--limit", str(args.limit)] if args.limit else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([*cmd, "--worker", str(i)], env=env) for i in range(args.workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            sys.exit(f"a worker failed in phase {phase}: exit codes {codes}")
    summary(args)


# -- the summary --------------------------------------------------------------------------------
def _spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def _combine(speedups: list[Speedup]) -> dict:
    """Mean and spread over seeds; the bound is kept when any seed's value is a bound."""
    bounds = {s.bound for s in speedups}
    bound = ">" if ">" in bounds else "<" if "<" in bounds else "="
    return {**_spread([s.value for s in speedups]), "bound": bound}


def _text(s: dict) -> str:
    prefix = "" if s["bound"] == "=" else s["bound"] + " "
    spread = f" ± {s['std']:.2f}" if s["n"] > 1 else ""
    return f"{prefix}{s['mean']:.2f}×{spread}"


def summarise(results: dict[str, dict]) -> dict:
    refs = {k: v for k, v in results.items() if v["run"]["variant"] == "reference"}
    learners = [v for v in results.values() if v["run"]["variant"] != "reference"]
    chosen: dict[tuple, list[dict]] = {}
    for r in learners:
        run = Run(**r["run"])
        if run.lr != tuned_lr(run, results):
            continue  # a learning-rate probe that lost
        cell = (run.pool, run.reference, run.ratio if run.variant != "uniform" else None)
        chosen.setdefault(cell, []).append(r)
    rows = []
    for (pool, reference, ratio), rs in sorted(chosen.items(), key=str):
        if ratio is None:
            continue
        uniform = chosen.get((pool, "default", None), [])
        if not uniform:
            continue
        ref = refs.get(f"reference_{pool}_{reference}")
        ref_flops = ref["train_flops"] + ref["cache_flops"] if ref else 0
        frontiers = {c: uniform_frontier(uniform, c) for c in COSTS}
        by_variant_budget: dict[tuple, list[dict]] = {}
        for r in rs:
            by_variant_budget.setdefault((r["run"]["variant"], r["run"]["budget"]), []).append(r)
        for (variant, budget), group in sorted(by_variant_budget.items()):
            acc = [r["final"]["zero_shot"] for r in group]

            def ups(cost, extra=0.0, group=group, frontiers=frontiers):
                return _combine([
                    speedup(frontiers[cost], r["final"]["zero_shot"], run_cost(r, cost) + extra)
                    for r in group
                ])

            total = statistics.fmean(r["total_flops"] for r in group)
            scoring = statistics.fmean(r["flops"]["learner_score"] for r in group)
            rows.append({
                "pool": pool, "clean_share": clean_share(POOLS[pool]), "reference": reference,
                "ratio": ratio, "variant": variant, "budget": budget, "lr": group[0]["run"]["lr"],
                "zero_shot": _spread(acc),
                "speedup_flops": ups("flops"),
                "speedup_steps": ups("steps"),
                "speedup_seconds": ups("seconds"),
                "speedup_flops_with_reference": ups("flops", extra=ref_flops),
                "scoring_share": scoring / total,
                "total_tflops": total / 1e12,
                "reference_tflops": ref_flops / 1e12,
            })
    frontier_rows = []
    for (pool, _, ratio), rs in sorted(chosen.items(), key=str):
        if ratio is None:
            for budget, acc, tflops in (
                (int(s), a, f / 1e12)
                for (s, a), (f, _) in zip(uniform_frontier(rs, "steps"),
                                          uniform_frontier(rs, "flops"), strict=True)
            ):
                frontier_rows.append({"pool": pool, "budget": budget, "zero_shot": acc,
                                      "total_tflops": tflops, "lr": rs[0]["run"]["lr"]})
    return {"rows": rows, "uniform": frontier_rows,
            "references": {k: {f: v[f] for f in ("train_flops", "cache_flops", "final")}
                           for k, v in refs.items()}}


def table(summary: dict) -> str:
    lines = ["uniform's frontier (final zero-shot per budget, each its own schedule):"]
    for u in summary["uniform"]:
        lines.append(f"  {u['pool']:<8} {u['budget']:>5} steps  {u['zero_shot']:.4f}  "
                     f"{u['total_tflops']:7.2f} TFLOPs  (lr {u['lr']:g})")
    head = (f"{'pool':<8}{'clean':>6} {'ratio':>5} {'variant':<11}{'steps':>6} {'zero-shot':>16} "
            f"{'× FLOPs':>16} {'× steps':>16} {'× wall':>16} {'× FLOPs+ref':>14} {'score%':>7}")
    lines += ["", head, "-" * len(head)]
    for r in summary["rows"]:
        z = r["zero_shot"]
        acc = f"{z['mean']:.4f}" + (f" ± {z['std']:.3f}" if z["n"] > 1 else "")
        lines.append(
            f"{r['pool']:<8}{r['clean_share']:>6.0%} {r['ratio']:>5g} "
            f"{r['variant'] + ('*' if r['reference'] != 'default' else ''):<11}"
            f"{r['budget']:>6} {acc:>16} {_text(r['speedup_flops']):>16} "
            f"{_text(r['speedup_steps']):>16} {_text(r['speedup_seconds']):>16} "
            f"{_text(r['speedup_flops_with_reference']):>14} {100 * r['scoring_share']:>6.1f}%"
        )
    lines.append("× = uniform's cost to reach the same final accuracy on its frontier / the run's "
                 "own; '>' uniform never got there (a lower bound), '<' its smallest budget "
                 "already did. ± = spread over seeds. * = strong reference. +ref: the "
                 "reference's training and cache charged in full to this one run.")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = sorted({u["pool"] for u in summary["uniform"]})
    fig, axes = plt.subplots(1, len(pools) + 1, figsize=(5 * (len(pools) + 1), 4.2))
    for ax, pool in zip(axes, pools, strict=False):
        u = [x for x in summary["uniform"] if x["pool"] == pool]
        ax.plot([x["total_tflops"] for x in u], [x["zero_shot"] for x in u], "k-o", ms=3,
                label="uniform")
        for variant in ("jest", "flexi", "flexi-text"):
            for ratio in sorted({r["ratio"] for r in summary["rows"] if r["pool"] == pool}):
                rs = [r for r in summary["rows"] if r["pool"] == pool and r["variant"] == variant
                      and r["ratio"] == ratio and r["reference"] == "default"]
                if rs:
                    ax.plot([r["total_tflops"] for r in rs], [r["zero_shot"]["mean"] for r in rs],
                            "-o", ms=3, label=f"{variant} f={ratio:g}")
        ax.set_xscale("log")
        ax.set_xlabel("total TFLOPs (training + scoring), log")
        ax.set_ylabel("final zero-shot top-1 (test)")
        ax.set_title(f"{pool} pool ({clean_share(POOLS[pool]):.0%} clean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for variant in ("flexi", "jest"):
        for ratio in (0.5, 0.8, 0.9):
            pts = {
                r["clean_share"]: r["speedup_flops"]
                for r in summary["rows"]
                if r["variant"] == variant and r["ratio"] == ratio
                and r["reference"] == "default" and r["budget"] == PLOT_BUDGET
            }
            if pts:
                xs = sorted(pts)
                line = ax.plot([100 * x for x in xs], [pts[x]["mean"] for x in xs],
                               "-" if variant == "flexi" else "--", label=f"{variant} f={ratio:g}")
                for x in xs:  # a triangle: uniform never got there, the value is a lower bound
                    ax.plot(100 * x, pts[x]["mean"], "^" if pts[x]["bound"] == ">" else "o",
                            color=line[0].get_color(), ms=5)
    ax.axhline(1.0, color="grey", lw=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g×"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g×"))
    ax.set_xlabel("clean share of the pool (%)")
    ax.set_ylabel(f"× fewer total FLOPs than uniform, {PLOT_BUDGET}-step runs")
    ax.set_title("when JEST pays (▲: lower bound)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(args) -> None:
    results = load_results()
    s = summarise(results)
    text = table(s)
    (RESULTS / "frontier.json").write_text(json.dumps({"summary": s, "runs": results}, indent=1))
    (RESULTS / "frontier.txt").write_text(text + "\n")
    if s["rows"]:
        plot(s, RESULTS / "frontier.png")
    print(text)
    print(f"\n{len(results)} runs; wrote {RESULTS / 'frontier.json'}, frontier.txt, frontier.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", choices=("run", "work", "summary"))
    p.add_argument("--plan", choices=sorted(PLANS), default="decisive")
    p.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    p.add_argument("--work", default="runs/frontier", help="references and checkpoints")
    p.add_argument("--limit", type=int, default=None, help="first LIMIT images only (tests)")
    p.add_argument("--phase", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.command == "run":
        run_plan(args)
    elif args.command == "work":
        work(args.plan, args.phase, args.worker, args)
    else:
        summary(args)


if __name__ == "__main__":
    main()
