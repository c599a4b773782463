"""The joint sampler against the matrix products it must do, in CPU time on one thread.

For each super-batch size B and loss (sigmoid, softmax), with d = 128, filter ratio 0.8 and 16
chunks, it times three things in the same process, repeats interleaved (the order rotates every
repeat), as process CPU time and wall time:
  * new: the sampler as jestkit runs it (jestkit.core.gains);
  * old: the gain states before issue 26 (read from git at commit 34e0e56), same loop, same noise;
  * gemm: the sampler's own matrix products replayed alone: every aten::mm / addmm it runs,
    recorded with torch.profiler (shapes and layouts), into preallocated outputs, the right
    operands read from a super-batch-sized matrix block after block as the sampler reads them.
The ratio sampler / gemm is taken per repeat (the three ran within seconds of each other) and
reported as median [min, max]. The sigmoid's products are the 4 (n_chunks - 1) c x d x B GEMMs
of docs/design.md (its first chunk needs none); the softmax's are those plus the whole-super-batch
pass of its first chunk (2 B x d x B) and the recomputed sum_{j in C} softplus(s_jk - R_j) terms
(2 |C| x d x B per model and chunk), which its exact gain needs (jestkit.core.gains).

    python benchmarks/selection_cpu.py [--sizes 4096 16384 65536] [--repeats 5]
        [--profile 16384]   # also print where the time goes (torch.profiler, per op)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from jestkit.core import gains as after
from jestkit.core.gains import Weighted
from jestkit.core.naive import random_embeddings
from jestkit.core.sampler import joint_sample

BEFORE = "34e0e56"  # the commit whose gain states the benchmark times beside today's


def gains_at(rev: str):
    """jestkit.core.gains as it was at commit `rev`, read from git (no copy of old code kept in
    the tree), as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{rev}:src/jestkit/core/gains.py"], cwd=root,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    name = f"gains_at_{rev}"
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses resolve their module by name
    exec(compile(source, f"{rev}:src/jestkit/core/gains.py", "exec"), module.__dict__)
    return module


before = gains_at(BEFORE)

FILTER_RATIO, N_CHUNKS = 0.8, 16
STATES = {
    "new": {"sigmoid": after.SigmoidGains, "softmax": after.SoftmaxGains},
    "old": {"sigmoid": before.SigmoidGains, "softmax": before.SoftmaxGains},
}


def _inputs(size: int, dim: int, seed: int = 0) -> list[Weighted]:
    g = torch.Generator().manual_seed(seed)
    learner = random_embeddings(size, dim, g, 10.0, -10.0, noise=1.0)
    reference = random_embeddings(size, dim, g, 12.0, -8.0, noise=1.0)
    return [Weighted(learner, 1.0), Weighted(reference, -1.0)]


def _select(impl: str, loss: str, models: list[Weighted], seed: int) -> torch.Tensor:
    state = STATES[impl][loss](models)
    b = round((1 - FILTER_RATIO) * state.size)
    return joint_sample(state, b, N_CHUNKS, 1.0, torch.Generator().manual_seed(seed))


def _recorded_products(loss: str, models: list[Weighted]) -> list[tuple]:
    """(a, b, out) operands for every matrix product one selection of the new sampler runs."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        _select("new", loss, models, seed=0)
    operands, lefts, outs, rights, start = [], {}, {}, {}, {}
    for evt in prof.events():
        if evt.name not in ("aten::mm", "aten::addmm"):
            continue
        shapes = evt.input_shapes[-2:] if evt.name == "aten::addmm" else evt.input_shapes[:2]
        (m, k), (_, n) = shapes
        # the right operand streams through a super-batch-sized matrix, as the sampler's
        # column blocks do (never the same cache-warm block twice in a row); the left operands
        # (a chunk's rows) and the outputs (the sampler's work buffer) are reused, as there
        size = max(n, models[0].outputs.image.shape[0])
        if k not in rights or rights[k].shape[0] < size:
            rights[k], start[k] = torch.randn(size, k), 0
        if start[k] + n > rights[k].shape[0]:
            start[k] = 0
        right = rights[k][start[k] : start[k] + n].T
        start[k] += n
        left = lefts.setdefault((m, k), torch.randn(m, k))
        operands.append((left, right, outs.setdefault((m, n), torch.empty(m, n))))
    return operands


def _replay(operands: list[tuple]) -> None:
    for a, b, out in operands:
        torch.mm(a, b, out=out)


def _timed(fn) -> tuple[float, float, object]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - w0, out


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "all": xs}


def case(size: int, loss: str, dim: int, repeats: int) -> dict:
    models = _inputs(size, dim)
    _select("new", loss, _inputs(256, dim), 0)  # warm up kernels outside the timing
    _select("old", loss, _inputs(256, dim), 0)
    operands = _recorded_products(loss, models)
    gemm_flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b, _ in operands)
    jobs = {
        "new": lambda: _select("new", loss, models, 1),
        "old": lambda: _select("old", loss, models, 1),
        "gemm": lambda: _replay(operands),
    }
    cpu = {k: [] for k in jobs}
    wall = {k: [] for k in jobs}
    names, picked = list(jobs), {}
    for r in range(repeats):
        for name in names[r % 3 :] + names[: r % 3]:  # rotate the order every repeat
            c, w, picked[name] = _timed(jobs[name])
            cpu[name].append(c)
            wall[name].append(w)
    new, old = picked["new"], picked["old"]  # same seed: the same draw up to rounding
    overlap = len(set(new.tolist()) & set(old.tolist())) / len(new)
    return {
        "size": size,
        "loss": loss,
        "dim": dim,
        "repeats": repeats,
        "gemm_calls": len(operands),
        "gemm_gflop": gemm_flops / 1e9,
        "cpu_s": {k: _spread(v) for k, v in cpu.items()},
        "wall_s": {k: _spread(v) for k, v in wall.items()},
        "new_vs_gemm": _spread([n / g for n, g in zip(cpu["new"], cpu["gemm"], strict=True)]),
        "old_vs_gemm": _spread([o / g for o, g in zip(cpu["old"], cpu["gemm"], strict=True)]),
        "old_vs_new": _spread([o / n for o, n in zip(cpu["old"], cpu["new"], strict=True)]),
        "selection_overlap_old_new": overlap,
    }


def where_time_goes(size: int, dim: int) -> str:
    """Self CPU time per aten op of one selection, old and new, both losses."""
    lines = []
    models = _inputs(size, dim)
    for loss in ("sigmoid", "softmax"):
        for impl in ("old", "new"):
            _select(impl, loss, _inputs(256, dim), 0)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                _select(impl, loss, models, 1)
            rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            total = sum(e.self_cpu_time_total for e in rows)
            top = ", ".join(
                f"{e.key.removeprefix('aten::')} {100 * e.self_cpu_time_total / total:.0f}%"
                for e in rows[:7]
            )
            lines.append(f"B={size} {loss:7s} {impl}: {top}")
    return "\n".join(lines)


def _fmt(s: dict, fmt: str) -> str:
    return f"{s['median']:{fmt}} [{s['min']:{fmt}}, {s['max']:{fmt}}]"


def table(rows: list[dict], config: dict) -> str:
    """The results as a text table (also from a .partial.json: python ... --table FILE)."""
    head = (
        f"{'B':>6} {'loss':>7} {'n':>2} | {'GFLOP':>6} {'gemm CPU s':>22} | "
        f"{'new CPU s':>22} {'old CPU s':>22} | {'new / gemm':>20} {'old / gemm':>20} | overlap"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        c = r["cpu_s"]
        lines.append(
            f"{r['size']:>6} {r['loss']:>7} {r['repeats']:>2} | {r['gemm_gflop']:6.1f} "
            f"{_fmt(c['gemm'], '6.2f'):>22} | {_fmt(c['new'], '6.2f'):>22} "
            f"{_fmt(c['old'], '6.2f'):>22} | {_fmt(r['new_vs_gemm'], '5.2f'):>20} "
            f"{_fmt(r['old_vs_gemm'], '5.2f'):>20} | {r['selection_overlap_old_new']:.3f}"
        )
    if config:
        before, after = config["loadavg_before"], config["loadavg_after"]
        lines.append(
            f"\nCPU seconds on 1 thread, median [min, max] over interleaved repeats; ratios per "
            f"repeat.\nd = {config['dim']}, f = {config['filter_ratio']}, {config['n_chunks']} "
            f"chunks, torch {config['torch']}, {config['cpus']} cores; load average (1, 5, 15 "
            f"min) before {', '.join(f'{x:.1f}' for x in before)}, after "
            f"{', '.join(f'{x:.1f}' for x in after)}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--losses", nargs="+", default=["sigmoid", "softmax"])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--repeats-at",
        type=str,
        nargs="*",
        default=["65536:sigmoid:3", "65536:softmax:1"],
        help="SIZE:LOSS:REPEATS overrides (the old softmax sampler takes minutes at 65,536)",
    )
    p.add_argument("--profile", type=int, help="also print the per-op profile at this B")
    p.add_argument("--out", default="benchmarks/results/selection_cpu.json")
    p.add_argument("--table", help="only print the table of this results file (or .partial.json)")
    args = p.parse_args()
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        rows, config = (saved, {}) if isinstance(saved, list) else (saved["rows"], saved["config"])
        print(table(rows, config))
        return
    torch.set_num_threads(1)
    overrides = {tuple(o.split(":")[:2]): int(o.split(":")[2]) for o in args.repeats_at}
    load_before = os.getloadavg()
    rows = []
    for size in args.sizes:
        for loss in args.losses:
            repeats = overrides.get((str(size), loss), args.repeats)
            print(f"B={size} {loss} x{repeats} ...", file=sys.stderr, flush=True)
            rows.append(case(size, loss, args.dim, repeats))
            Path(args.out).with_suffix(".partial.json").write_text(json.dumps(rows, indent=2))
    profile_text = where_time_goes(args.profile, args.dim) if args.profile else ""
    load_after = os.getloadavg()
    result = {
        "config": {
            "dim": args.dim,
            "filter_ratio": FILTER_RATIO,
            "n_chunks": N_CHUNKS,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "rows": rows,
        "profile": profile_text,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    print(table(rows, result["config"]))
    if profile_text:
        print("\nself CPU time by op (torch.profiler), one selection:\n" + profile_text)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
