"""Selection benchmark: the memory-bounded joint sampler against the naive B x B listing.

For every super-batch size B and loss (sigmoid, softmax), with d = 256, filter ratio 0.8 and 16
chunks, it measures in a fresh subprocess each (so peak memory is that case's alone):
  * median wall time over repeats and the extra peak resident memory (ru_maxrss after the runs
    minus ru_maxrss once the inputs exist) of the bounded sampler and of the naive one (skipped
    where its matrices cannot fit);
  * the matrix-multiply FLOPs of the bounded sampler (torch.utils.flop_counter) and the time plain
    GEMMs of its shape take to do that many FLOPs: this machine's limit for the same work.

    python benchmarks/selection.py [--sizes 4096 16384] [--out FILE] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import jestkit
from jestkit.core.naive import random_embeddings

DIM, FILTER_RATIO, N_CHUNKS = 256, 0.8, 16
NAIVE_MEMORY_LIMIT = 14 * 2**30  # skip naive runs whose matrices alone would exceed this


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _inputs(size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    return (
        random_embeddings(size, DIM, g, 10.0, -10.0, noise=1.0),
        random_embeddings(size, DIM, g, 12.0, -8.0, noise=1.0),
    )


def _select(learner, reference, loss: str, naive: bool, seed: int = 0):
    return jestkit.select(
        learner,
        reference,
        loss=loss,
        naive=naive,
        filter_ratio=FILTER_RATIO,
        n_chunks=N_CHUNKS,
        generator=torch.Generator().manual_seed(seed),
    )


def _gemm_time(flops: int, size: int, repeats: int) -> list[float]:
    """Time of plain (512 x d) @ (d x B) products adding up to `flops`."""
    a, b = torch.randn(512, DIM), torch.randn(DIM, size)
    per = 2 * 512 * DIM * size
    n = max(1, round(flops / per))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return times


def worker(size: int, loss: str, impl: str, repeats: int) -> dict:
    _select(*_inputs(256), loss, naive=False)  # warm up threads and kernels, outside the timing
    learner, reference = _inputs(size)
    baseline = _maxrss_bytes()
    out: dict = {"size": size, "loss": loss, "impl": impl}
    if impl == "gemm":
        with FlopCounterMode(display=False) as counter:
            _select(learner, reference, loss, naive=False)
        out["flops"] = counter.get_total_flops()
        out["times"] = _gemm_time(out["flops"], size, repeats)
    else:
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            idx = _select(learner, reference, loss, naive=(impl == "naive"), seed=r)
            times.append(time.perf_counter() - t0)
        assert len(set(idx.tolist())) == round((1 - FILTER_RATIO) * size)
        out["times"] = times
    out["extra_peak_bytes"] = _maxrss_bytes() - baseline
    out["median_s"] = statistics.median(out["times"])
    return out


def _run_case(size: int, loss: str, impl: str, repeats: int, time_limit: float) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--sizes",
        str(size),
        "--loss",
        loss,
        "--repeats",
        str(repeats),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=os.environ, timeout=time_limit
        )
    except subprocess.TimeoutExpired:
        # a lower bound is still a measurement: the case took longer than time_limit (its
        # inputs and warm-up take a few seconds of it)
        return {
            "size": size,
            "loss": loss,
            "impl": impl,
            "timed_out_s": time_limit,
            "min_mean_s": time_limit / repeats,
        }
    if proc.returncode != 0:
        return {"size": size, "loss": loss, "impl": impl, "error": proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**30:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--losses", nargs="+", default=["sigmoid", "softmax"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--large-repeats", type=int, default=1, help="repeats for B > 16,384")
    p.add_argument("--out", default="benchmarks/results/selection.json")
    p.add_argument(
        "--time-limit", type=float, default=900, help="seconds per case (all its repeats)"
    )
    p.add_argument("--worker", choices=["bounded", "naive", "gemm"], help=argparse.SUPPRESS)
    p.add_argument("--loss", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.manual_seed(0)
    if args.worker:
        print(json.dumps(worker(args.sizes[0], args.loss, args.worker, args.repeats)))
        return

    rows = []
    for size in args.sizes:
        repeats = args.repeats if size <= 16384 else args.large_repeats
        for loss in args.losses:
            row = {"size": size, "loss": loss, "repeats": repeats}
            for impl in ("bounded", "naive", "gemm"):
                if impl == "naive" and 3 * size * size * 4 > NAIVE_MEMORY_LIMIT:
                    row[impl] = {"skipped": "its B x B matrices do not fit in memory here"}
                    continue
                print(f"B={size} {loss} {impl} ...", file=sys.stderr, flush=True)
                row[impl] = _run_case(size, loss, impl, repeats, args.time_limit)
            bounded, naive, gemm = row["bounded"], row["naive"], row["gemm"]
            if "min_mean_s" in naive and "median_s" in bounded:
                row["speedup_vs_naive_at_least"] = naive["min_mean_s"] / bounded["median_s"]
            if "median_s" in naive and "median_s" in bounded:
                row["speedup_vs_naive"] = naive["median_s"] / bounded["median_s"]
                row["memory_ratio_vs_naive"] = (
                    bounded["extra_peak_bytes"] / naive["extra_peak_bytes"]
                )
            if "median_s" in gemm and "median_s" in bounded:
                row["time_vs_equal_flop_gemm"] = bounded["median_s"] / gemm["median_s"]
            rows.append(row)

    result = {
        "config": {
            "dim": DIM,
            "filter_ratio": FILTER_RATIO,
            "n_chunks": N_CHUNKS,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    head = (
        f"{'B':>6} {'loss':>7} | {'bounded s':>9} {'naive s':>8} {'speedup':>7} | "
        f"{'bounded GiB':>11} {'naive GiB':>9} {'mem ratio':>9} | {'GFLOP':>7} "
        f"{'gemm s':>7} {'vs gemm':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        b, n, g = r["bounded"], r["naive"], r["gemm"]

        def f(d, key, fmt):
            return format(d[key], fmt) if key in d else "-"

        print(
            f"{r['size']:>6} {r['loss']:>7} | {f(b, 'median_s', '9.2f')} {f(n, 'median_s', '8.2f')}"
            f" {f(r, 'speedup_vs_naive', '7.2f')} | {_gib(b.get('extra_peak_bytes')):>11}"
            f" {_gib(n.get('extra_peak_bytes')):>9} {f(r, 'memory_ratio_vs_naive', '9.3f')} |"
            f" {g.get('flops', 0) / 1e9:7.1f} {f(g, 'median_s', '7.2f')}"
            f" {f(r, 'time_vs_equal_flop_gemm', '7.2f')}"
        )
        for impl in ("bounded", "naive", "gemm"):
            if "error" in r[impl]:
                print(f"  {impl} failed: {r[impl]['error']}")
            if "timed_out_s" in r[impl]:
                t = r[impl]["timed_out_s"]
                print(
                    f"  {impl}: its {r['repeats']} repeats (with set-up) took over {t:.0f} s,"
                    f" about {r[impl]['min_mean_s']:.0f} s or more per selection: the bounded"
                    f" sampler is about {r['speedup_vs_naive_at_least']:.0f}x faster or more"
                )


if __name__ == "__main__":
    main()
