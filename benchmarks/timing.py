"""Seconds, not only FLOPs: a time-to-accuracy frontier beside the FLOPs one (issue 26).

The protocol, which holds on a shared machine:

    time of a run of n steps = measured seconds per step × n + measured one-off seconds

A per-step rate is measured; a whole run is never timed. Each method's configuration (the
frontier's settings on the web pool: uniform, the offline filter, easy-reference, JEST,
Flexi-JEST, filter + JEST) is trained for --steps steps in worker processes that each run one
torch thread pinned to one core (os.sched_setaffinity); the first --skip steps (the FLOP count,
warm-up) are dropped, and the rest give the seconds per step of every phase from result's
"timing" (jestkit.engine.timing), in process CPU time (the primary unit: other jobs on the same
cores slow wall time far more than CPU time) and in wall time. The methods' repeats are
interleaved (repeat r runs every method, in an order rotated by r), so that a change of the
machine's load hits every method alike; the spread over the repeats is reported. The one-off
costs are measured the same way: the reference's training (its per-step rate × its 300 steps)
and its pass over the pool (its per-example rate of a no-grad forward × the pool's size),
charged to every method that uses the reference (the filter, easy-reference, JEST). The
machine's load (`uptime`) is recorded before and after.

Accuracies are not re-run: they are the final zero-shot accuracies of the cached frontier runs
(benchmarks/frontier.py, benchmarks/results/frontier/, read as its payoff summary reads them).
Seconds and FLOPs to reach uniform's accuracy at each of its budgets are read off each method's
frontier (jestkit.payoff.timing), and so is the ratio of the time speed-up to the FLOPs one.

    python benchmarks/timing.py run --repeats 5 --workers 2   # measure, then summary
    python benchmarks/timing.py summary                       # re-read timing.json's measures
    python benchmarks/timing.py ab --against COMMIT --core 1  # this tree's steps against COMMIT's

writes benchmarks/results/timing.json (the measurements and the summary), timing.txt and
timing.png (accuracy against CPU seconds beside accuracy against FLOPs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

RESULTS = Path("benchmarks/results")
POOL = "web"
REFERENCE_STEPS = 300  # reference_training()'s steps: what the frontier's reference ran


def methods():
    """name (as the frontier's payoff table names it) -> the frontier Run it times."""
    from frontier import EASY_RATIO, FILTER_JEST_RATIO, TUNE_KEEP, Run, method_name

    runs = [
        Run(POOL, "uniform", 0),
        Run(POOL, "uniform", 0, keep=TUNE_KEEP),
        Run(POOL, "easy", 0, EASY_RATIO),
        Run(POOL, "jest", 0, 0.9),
        Run(POOL, "flexi", 0, 0.9),
        Run(POOL, "flexi-text", 0, 0.9),
        Run(POOL, "jest", 0, FILTER_JEST_RATIO, keep=TUNE_KEEP),
    ]
    return {method_name(r): r for r in runs}


ONE_OFF = ("reference training", "reference pass")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# -- measuring (in pinned, single-threaded workers) ---------------------------------------------
class Timer:
    """One worker: the pool's data and a reference in memory, tasks timed one by one."""

    def __init__(self, work: Path, limit: int | None):
        from frontier import POOLS

        from jestkit.fashion.prepare import prepare_caption_data

        self.work = work
        self.data = prepare_caption_data(replace(POOLS[POOL], limit=limit))
        self.filtered: dict[float, object] = {}

    @property
    def ref_dir(self) -> Path:
        return self.work / f"reference_{POOL}"

    def pool(self, keep: float):
        from jestkit.fashion.reference import filter_pool

        if keep == 1:
            return self.data
        if keep not in self.filtered:
            self.filtered[keep] = filter_pool(self.data, self.ref_dir, keep, "sigmoid")
        return self.filtered[keep]

    def method(self, run, steps: int) -> dict:
        """Train `steps` steps of the run's configuration; its timing and FLOPs per step."""
        import torch
        from frontier import learner_config

        from jestkit.engine.loop import Trainer
        from jestkit.fashion.reference import load_reference
        from jestkit.models.factory import ModelConfig, build_model

        config = learner_config(replace(run, budget=steps, lr=1e-3))
        data = self.pool(run.keep)
        torch.manual_seed(0)
        model = build_model(ModelConfig(), len(data.vocab), config.selection.loss)
        ref = None
        if config.policy.uses_reference:
            ref = load_reference(self.ref_dir, data, config.selection.loss)
        trainer = Trainer(model, config, data.pool_source(), ref, None, None, progress=False)
        result = trainer.run()
        return {"timing": result["timing"], "flops_per_step": result["flops_per_step"]}

    def reference_training(self, steps: int) -> dict:
        """`steps` steps of the reference's training (uniform batches of its curated set)."""
        import torch

        from jestkit.core import SelectionConfig
        from jestkit.engine.config import TrainConfig, reference_training
        from jestkit.engine.loop import Trainer
        from jestkit.models.factory import ModelConfig, build_model

        training = replace(reference_training(), steps=steps, checkpoint_every=steps)
        config = TrainConfig(SelectionConfig(policy="uniform"), training=training)
        torch.manual_seed(0)
        model = build_model(ModelConfig(), len(self.data.vocab), "sigmoid")
        trainer = Trainer(model, config, self.data.curated_source(), progress=False)
        result = trainer.run()
        return {"timing": result["timing"], "flops_per_step": result["flops_per_step"]}

    def reference_pass(self, batches: int, batch_size: int = 1024) -> dict:
        """The reference's no-grad forward over `batches` batches of the pool (the cache's
        work per example; jestkit.fashion.reference builds it in batches of 1024)."""
        import torch

        from jestkit.fashion.source import pixels
        from jestkit.models.factory import ModelConfig, build_model

        model = build_model(ModelConfig(), len(self.data.vocab), "sigmoid").eval()
        n = min(batches * batch_size, len(self.data.pool))
        clocks = {"cpu": 0.0, "wall": 0.0}
        with torch.no_grad():
            for start in range(0, n, batch_size):
                rows = torch.arange(start, min(n, start + batch_size))
                c, w = time.process_time(), time.perf_counter()
                images = pixels(self.data.pool.images[rows])
                model(images, self.data.pool_tokens[rows])
                clocks["cpu"] += time.process_time() - c
                clocks["wall"] += time.perf_counter() - w
        return {"examples": n, "seconds": clocks, "pool_size": len(self.data.pool)}


def prepare_reference(work: Path, limit: int | None) -> None:
    """A reference for the timed runs to read (its weights do not change the work a step does:
    a short training is enough; its cache covers the whole pool as the frontier's did)."""
    from frontier import POOLS

    from jestkit.engine.config import reference_training
    from jestkit.fashion.prepare import prepare_caption_data
    from jestkit.fashion.reference import train_reference
    from jestkit.models.factory import ModelConfig

    ref_dir = work / f"reference_{POOL}"
    if (ref_dir / "reference.json").exists():
        return
    data = prepare_caption_data(replace(POOLS[POOL], limit=limit))
    train_reference(data, ModelConfig(), replace(reference_training(), steps=10,
                    checkpoint_every=10), "sigmoid", ref_dir, progress=False)  # fmt: skip


def work(args) -> None:
    """A worker: pinned to --core, one thread, its share of the interleaved task list."""
    os.sched_setaffinity(0, {args.core})
    import torch

    torch.set_num_threads(1)
    tasks = json.loads(Path(args.tasks).read_text())
    timer = Timer(Path(args.work), args.limit)
    runs = methods()
    out = Path(args.work) / "measured"
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        name, repeat = task["name"], task["repeat"]
        load = os.getloadavg()
        if name == "reference training":
            got = timer.reference_training(args.steps)
        elif name == "reference pass":
            got = timer.reference_pass(args.pass_batches)
        else:
            got = timer.method(runs[name], args.steps)
        record = {**task, **got, "core": args.core, "loadavg_before": load,
                  "loadavg_after": os.getloadavg()}  # fmt: skip
        path = out / f"{task['order']:03d}.json"
        path.write_text(json.dumps(record))
        print(f"[core {args.core}] {repeat}: {name} done", flush=True)


def task_list(repeats: int) -> list[dict]:
    """Every method and one-off cost, each repeat in an order rotated by the repeat."""
    names = list(methods()) + list(ONE_OFF)
    tasks = []
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            tasks.append({"name": name, "repeat": r, "order": len(tasks)})
    return tasks


def measure(args) -> list[dict]:
    """Run the task list over --workers pinned workers (task i to worker i mod workers)."""
    work_dir = Path(args.work)
    prepare_reference(work_dir, args.limit)
    measured = work_dir / "measured"
    if measured.exists():
        for p in measured.glob("*.json"):
            p.unlink()
    tasks = task_list(args.repeats)
    cores = sorted(os.sched_getaffinity(0))[: args.workers]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for i, core in enumerate(cores):
        path = work_dir / f"tasks-{i}.json"
        path.write_text(json.dumps(tasks[i :: len(cores)]))
        cmd = [sys.executable, __file__, "work", "--tasks", str(path), "--core", str(core),
               "--work", str(work_dir), "--steps", str(args.steps),
               "--pass-batches", str(args.pass_batches)]  # fmt: skip
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        sys.exit(f"a timing worker failed: exit codes {codes}")
    return [json.loads(p.read_text()) for p in sorted(measured.glob("*.json"))]


# -- the summary ----------------------------------------------------------------------------------
def rates(measurements: list[dict], skip: int) -> dict:
    """Per repeat: every method's seconds per step by phase (cpu, wall), the reference's
    training seconds per step and its pass's seconds per example."""
    from jestkit.payoff.timing import step_rate

    out: dict[int, dict] = {}
    for m in measurements:
        r = out.setdefault(m["repeat"], {})
        if m["name"] == "reference pass":
            r[m["name"]] = {c: m["seconds"][c] / m["examples"] for c in ("cpu", "wall")}
            r["pool_size"] = m["pool_size"]
        else:
            r[m["name"]] = {c: step_rate(m["timing"], c, skip) for c in ("cpu", "wall")}
            r[m["name"]]["flops_per_step"] = m["flops_per_step"]
    return out


def summarise(measurements: list[dict], frontier_pools: dict, skip: int,
              reference_steps: int = REFERENCE_STEPS) -> dict:  # fmt: skip
    """The per-step phase table, the one-off costs, and each method's seconds to reach
    uniform's accuracy at each budget with its time and FLOPs speed-ups, from the
    measurements and the frontier's payoff summary (benchmarks/frontier.py payoff())."""
    from jestkit.payoff.timing import (
        frontier_costs,
        speedups_at_uniform,
        spread,
        time_against_flops,
    )

    per_repeat = rates(measurements, skip)
    repeats = sorted(per_repeat)
    pool = frontier_pools[POOL]["methods"]
    names = [n for n in methods() if n in pool and all(n in per_repeat[r] for r in repeats)]
    phases = {}
    for name in names:
        rows = {}
        for c in ("cpu", "wall"):
            keys = per_repeat[repeats[0]][name][c]
            rows[c] = {k: spread([per_repeat[r][name][c][k] for r in repeats]) for k in keys}
        rows["flops_per_step"] = per_repeat[repeats[0]][name]["flops_per_step"]
        phases[name] = rows

    def one_off(r: dict, c: str) -> dict:
        train = r["reference training"][c]["step"] * reference_steps
        sweep = r["reference pass"][c] * r["pool_size"]
        return {"reference training": train, "reference pass": sweep, "total": train + sweep}

    one_offs = {c: {k: spread([one_off(per_repeat[r], c)[k] for r in repeats])
                    for k in ("reference training", "reference pass", "total")}
                for c in ("cpu", "wall")}  # fmt: skip
    uniform_points = [(p["budget"], p["zero_shot"]["mean"]) for p in pool["uniform"]["points"]]
    reach = {}
    for name in names:
        points = [(p["budget"], p["zero_shot"]["mean"]) for p in pool[name]["points"]]
        uses_reference = pool[name]["kind"] != "uniform"
        row = {"kind": pool[name]["kind"], "budgets": [b for b, _ in points],
               "accuracy": [a for _, a in points]}  # fmt: skip
        for basis in ("learner", "total"):  # the reference amortised away, or charged in full
            flops = _flops(pool[name]["points"], basis)
            u_flops = _flops(pool["uniform"]["points"], basis)
            f_rows = speedups_at_uniform(list(zip(u_flops, [a for _, a in uniform_points],
                                                  strict=True)),
                                         list(zip(flops, [a for _, a in points], strict=True)))
            by_clock = {}
            for c in ("cpu", "wall"):
                per = []
                for r in repeats:
                    rr = per_repeat[r]
                    extra = one_off(rr, c)["total"] if basis == "total" and uses_reference else 0
                    t_rows = speedups_at_uniform(
                        frontier_costs(uniform_points, rr["uniform"][c]["step"]),
                        frontier_costs(points, rr[name][c]["step"], extra))
                    per.append((t_rows, time_against_flops(t_rows, f_rows)))
                by_clock[c] = [_combine([p[0][i] for p in per], [p[1][i] for p in per])
                               for i in range(len(uniform_points))]  # fmt: skip
            row[basis] = {"flops": f_rows, **by_clock}
        reach[name] = row
    return {"pool": POOL, "repeats": len(repeats), "skip": skip, "phases": phases,
            "one_off": one_offs, "reference_steps": reference_steps,
            "uniform": {"budgets": [b for b, _ in uniform_points],
                        "accuracy": [a for _, a in uniform_points]},
            "reach": reach, "goal": _goal(reach)}  # fmt: skip


def _flops(points: list[dict], basis: str) -> list[float]:
    """FLOPs per frontier point (the payoff summary keeps TFLOPs): training + learner scoring,
    or the total with the reference's training and pass over the pool."""
    if basis == "learner":
        return [1e12 * (p["train"] + p["learner_score"]) for p in points]
    return [1e12 * p["total"] for p in points]


def _combine(rows: list[dict], ratios: list[float | None]) -> dict:
    """One target's rows over the repeats: seconds, time speed-up and its ratio to the FLOPs
    speed-up, each with its spread (None where the method never reached the target)."""
    from jestkit.payoff.timing import spread

    if rows[0]["method"] is None:
        return {"bound": "–", "seconds": None, "speedup": None, "ratio": None}
    return {"bound": rows[0]["bound"], "seconds": spread([r["method"] for r in rows]),
            "uniform_seconds": spread([r["uniform"] for r in rows]),
            "speedup": spread([r["speedup"] for r in rows]), "ratio": spread(ratios)}  # fmt: skip


def _goal(reach: dict) -> dict:
    """The issue's goal: Flexi-JEST's time speed-up ≥ 0.8× its FLOPs speed-up (CPU time,
    learner basis: where its frontier reaches uniform's accuracy exactly)."""
    out = {}
    for name, row in reach.items():
        if not name.startswith("flexi"):
            continue
        cells = [x["ratio"]["mean"] for x in row["learner"]["cpu"] if x["ratio"] is not None]
        out[name] = {"ratio": statistics.fmean(cells) if cells else None, "goal": 0.8,
                     "met": bool(cells) and statistics.fmean(cells) >= 0.8}  # fmt: skip
    return out


def _s(x: dict | None, digits: int = 2, unit: str = "") -> str:
    if x is None:
        return "–"
    return f"{x['mean']:.{digits}f}{unit} ± {x['std']:.{digits}f}"


def table(s: dict, load: dict) -> str:
    lines = [
        f"Time to accuracy on the {s['pool']} pool (issue 26). Protocol: time of a run of n steps"
        " = measured seconds per step × n + measured one-off seconds (the reference's training"
        " and its pass over the pool, for the methods that use it); a per-step rate is measured,"
        " never a whole run. Each rate: a timed run of the method's frontier configuration in a"
        f" worker pinned to one core with one torch thread, its first {s['skip']} steps dropped;"
        f" {s['repeats']} repeats interleaved between the methods (rotated order); ± = spread"
        " (standard deviation) over the repeats. CPU time (process_time) is the primary unit;"
        " wall time beside it. Accuracies: the cached frontier runs (benchmarks/frontier.py),"
        " each budget's final zero-shot top-1.",
        f"Machine load: before {load['before']!r}; after {load['after']!r}.",
        "",
        "Seconds per training step by phase (CPU, mean over repeats):",
    ]
    from jestkit.payoff.timing import TRAIN_PHASES

    short = {"data": "data", "learner_score": "l.score", "reference_score": "r.score",
             "select": "select", "forward_backward": "fwd+bwd", "optimizer": "optim",
             "account": "account"}  # fmt: skip
    head = (f"{'method':<26}" + "".join(f"{short[p]:>9}" for p in TRAIN_PHASES)
            + f"{'CPU s/step':>18}{'wall s/step':>18}{'GFLOP/step':>11}{'× uni CPU':>10}"
            f"{'× uni FLOPs':>12}")  # fmt: skip
    lines += [head, "-" * len(head)]
    u = s["phases"]["uniform"]
    u_flops = sum(u["flops_per_step"][k] or 0 for k in ("train", "learner_score"))
    for name, p in s["phases"].items():
        cpu = p["cpu"]
        flops = sum(p["flops_per_step"][k] or 0 for k in ("train", "learner_score"))
        cells = "".join(f"{cpu[k]['mean']:>9.4f}" if k in cpu else f"{'–':>9}"
                        for k in TRAIN_PHASES)  # fmt: skip
        lines.append(f"{name:<26}{cells}{_s(cpu['step'], 4):>18}{_s(p['wall']['step'], 4):>18}"
                     f"{flops / 1e9:>11.2f}{cpu['step']['mean'] / u['cpu']['step']['mean']:>10.2f}"
                     f"{flops / u_flops:>12.2f}")  # fmt: skip
    o = s["one_off"]
    lines += ["", f"One-off costs (the reference: {s['reference_steps']} training steps, one "
              "no-grad pass over the pool), seconds:"]  # fmt: skip
    for k in ("reference training", "reference pass", "total"):
        lines.append(f"  {k:<20} CPU {_s(o['cpu'][k], 1):>14}   wall {_s(o['wall'][k], 1):>14}")
    for basis, title in (("learner", "training + scoring (the reference amortised away)"),
                         ("total", "with the reference's one-off costs charged in full")):
        lines += ["", f"Seconds to reach uniform's accuracy at each of its budgets, {title}: "
                  "×time = uniform's seconds at that budget / the method's, ×FLOPs the same in "
                  "FLOPs, time/FLOPs = their ratio (1: time agrees with FLOPs; < 1: the method "
                  "costs more in time than its FLOPs say)."]  # fmt: skip
        head = (f"{'method':<26}{'steps':>8}{'accuracy':>9}{'CPU s to reach':>17}"
                f"{'×time CPU':>14}{'×FLOPs':>8}{'time/FLOPs CPU':>16}{'time/FLOPs wall':>17}")
        lines += [head, "-" * len(head)]
        for name, row in s["reach"].items():
            if name == "uniform":
                continue
            for i, (b, a) in enumerate(zip(s["uniform"]["budgets"], s["uniform"]["accuracy"],
                                           strict=True)):  # fmt: skip
                x, w, f = row[basis]["cpu"][i], row[basis]["wall"][i], row[basis]["flops"][i]
                if x["seconds"] is None:
                    lines.append(f"{name:<26}{b:>8}{a:>9.3f}   – never reached")
                    continue
                le = "≤" if x["bound"] == ">" else ""
                ge = "≥" if x["bound"] == ">" else ""
                secs = f"{le}{_s(x['seconds'], 0)}"
                up = f"{ge}{_s(x['speedup'])}"
                lines.append(f"{name:<26}{b:>8}{a:>9.3f}{secs:>17}{up:>14}"
                             f"{ge + format(f['speedup'], '.2f'):>8}{_s(x['ratio']):>16}"
                             f"{_s(w['ratio']):>17}")  # fmt: skip
    lines += ["", "steps, accuracy: uniform's budget and its final accuracy there. '– never "
              "reached': the method's frontier never gets to that accuracy; '≤' / "
              "'≥': its smallest budget already did (its seconds an upper bound, its speed-ups "
              "lower bounds; the time/FLOPs ratio is that budget's, exact).",
              "", "Goal (issue 26): Flexi-JEST's speed-up in time >= 0.8× its speed-up in "
              "FLOPs on the web pool (CPU seconds, training + scoring):"]  # fmt: skip
    for name, g in s["goal"].items():
        ratio = "–" if g["ratio"] is None else f"{g['ratio']:.2f}"
        lines.append(f"  {name}: time/FLOPs speed-up ratio {ratio} -> "
                     f"{'met' if g['met'] else 'NOT met'}")
    return "\n".join(lines)


def plot(s: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colours = plt.get_cmap("tab10").colors
    for i, (name, row) in enumerate(s["reach"].items()):
        colour = "k" if name == "uniform" else colours[i % len(colours)]
        cpu = s["phases"][name]["cpu"]["step"]["mean"]
        one_off = s["one_off"]["cpu"]["total"]["mean"] if row["kind"] != "uniform" else 0.0
        accs = row["accuracy"]
        axes[0].plot([cpu * b for b in row["budgets"]], accs, "-o", ms=3, color=colour, label=name)
        flops = s["phases"][name]["flops_per_step"]
        per = sum(flops[k] or 0 for k in ("train", "learner_score"))
        axes[1].plot([per * b / 1e12 for b in row["budgets"]], accs, "-o", ms=3, color=colour,
                     label=name)
        if one_off:
            axes[0].plot([cpu * b + one_off for b in row["budgets"]], accs, ":", lw=1,
                         color=colour)
    for ax, xlabel in ((axes[0], "CPU seconds (measured s/step × steps), log"),
                       (axes[1], "TFLOPs (training + scoring), log")):  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final zero-shot top-1 (test)")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{s['pool']} pool: accuracy against time (dotted: + reference one-off)")
    axes[1].set_title(f"{s['pool']} pool: accuracy against FLOPs")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(measurements: list[dict], load: dict, skip: int) -> None:
    import frontier

    s = summarise(measurements, frontier.payoff(frontier.load_results()), skip)
    text = table(s, load)
    (RESULTS / "timing.json").write_text(json.dumps(
        {"load": load, "summary": s, "measurements": measurements}, indent=1))
    (RESULTS / "timing.txt").write_text(text + "\n")
    plot(s, RESULTS / "timing.png")
    print(text)
    print(f"\nwrote {RESULTS / 'timing.json'}, timing.txt, timing.png")


# -- the same rates from an earlier tree, side by side ---------------------------------------
def ab_work(args) -> None:
    """A worker for `ab`: the per-step CPU seconds by phase of --methods, from the jestkit on
    PYTHONPATH (this file's Timer), as one JSON line."""
    os.sched_setaffinity(0, {args.core})
    import torch

    torch.set_num_threads(1)
    timer, runs = Timer(Path(args.work), args.limit), methods()
    out = {}
    for name in args.methods.split(","):
        cpu = timer.method(runs[name], args.steps)["timing"]["per_step"]["cpu"]
        out[name] = {phase: statistics.fmean(v[args.skip:]) for phase, v in cpu.items()}
    print(json.dumps(out))


def ab(args) -> None:
    """The methods' CPU seconds per step from this tree and from commit --against's src/,
    alternately in fresh single-threaded pinned workers (order rotated each repeat), with each
    method's step over uniform's taken within one worker: what a change to jestkit did to the
    time a step takes, measured side by side. Writes benchmarks/results/timing_ab.{json,txt}."""
    import tempfile

    names = args.methods.split(",")
    if names[0] != "uniform":
        raise SystemExit("--methods must start with uniform (each step is read over uniform's)")
    prepare_reference(Path(args.work), args.limit)
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.against, "src"], cwd=root, check=True,
                                 capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        trees = {args.against: Path(tmp) / "src", "this tree": root / "src"}
        load, got = {"before": uptime()}, {t: [] for t in trees}
        for r in range(args.repeats):
            for tree in list(trees)[r % 2:] + list(trees)[: r % 2]:
                env = {**os.environ, "PYTHONPATH": str(trees[tree]), "OMP_NUM_THREADS": "1"}
                cmd = [sys.executable, __file__, "abwork", "--methods", args.methods, "--core",
                       str(args.core), "--work", args.work, "--steps", str(args.steps),
                       "--skip", str(args.skip)] + (["--limit", str(args.limit)] if args.limit
                                                    else [])  # fmt: skip
                line = subprocess.run(cmd, env=env, check=True, capture_output=True,
                                      text=True).stdout.strip().splitlines()[-1]  # fmt: skip
                got[tree].append(json.loads(line))
                print(f"repeat {r}: {tree} done", flush=True)
        load["after"] = uptime()

    def cell(values: list[float], digits: int = 3) -> str:
        return f"{statistics.fmean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"

    head = (f"{'method':<26}{'tree':<12}{'CPU s/step':>16}{'learner score':>16}"
            f"{'select':>16}{'× uniform':>14}")
    lines = [f"CPU seconds per step, this tree against {args.against} (its src/), {args.repeats} "
             "repeats alternating the trees in fresh workers pinned to one core, one thread; "
             f"× uniform: the method's step over uniform's in the same worker; mean ± spread. "
             f"Load before {load['before']!r}, after {load['after']!r}.", "", head,
             "-" * len(head)]  # fmt: skip
    for name in names:
        for tree, rs in got.items():
            ph = [r[name] for r in rs]
            over = [r[name]["step"] / r["uniform"]["step"] for r in rs]
            lines.append(f"{name:<26}{tree:<12}{cell([p['step'] for p in ph]):>16}"
                         f"{cell([p.get('learner_score', 0.0) for p in ph]):>16}"
                         f"{cell([p.get('select', 0.0) for p in ph]):>16}{cell(over, 2):>14}")
    text = "\n".join(lines)
    (RESULTS / "timing_ab.json").write_text(json.dumps(
        {"against": args.against, "load": load, "repeats": got}, indent=1))
    (RESULTS / "timing_ab.txt").write_text(text + "\n")
    print(text)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/frontier.py
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", choices=("run", "work", "summary", "ab", "abwork"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="processes, one core and thread each")
    p.add_argument("--steps", type=int, default=12, help="steps of each timed run")
    p.add_argument("--skip", type=int, default=2, help="first steps of each run not counted")
    p.add_argument("--pass-batches", type=int, default=4, help="batches of 1024 the reference's "
                   "pass is timed on")  # fmt: skip
    p.add_argument("--work", default="runs/timing", help="the reference, the raw measurements")
    p.add_argument("--limit", type=int, default=None, help="first LIMIT images only (tests)")
    p.add_argument("--against", default="HEAD~1", help="ab: the commit whose src/ to compare")
    p.add_argument("--methods", default="uniform,flexi f=0.9,jest f=0.9",
                   help="ab: the methods to time, uniform first")  # fmt: skip
    p.add_argument("--tasks", help=argparse.SUPPRESS)
    p.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.command == "work":
        work(args)
    elif args.command == "abwork":
        ab_work(args)
    elif args.command == "ab":
        ab(args)
    elif args.command == "run":
        load = {"before": uptime()}
        measurements = measure(args)
        load["after"] = uptime()
        summary(measurements, load, args.skip)
    else:
        saved = json.loads((RESULTS / "timing.json").read_text())
        summary(saved["measurements"], saved["load"], args.skip)


if __name__ == "__main__":
    main()
