"""Distributed selection benchmark: bytes exchanged per selection step, and selection time.

jestkit.dropin.distributed selects over the whole super-batch while each rank holds only its shard.
This measures, per rank and per selection step (one super-batch, learnability, joint, 16 chunks):

  * the bytes jestkit's collectives move (counted by jestkit.dropin.distributed.Traffic: what a rank
    receives from the others), at small scale on CPU with 2 gloo processes, next to the same
    count from the formula below and next to the alternative of gathering every embedding (then
    selecting as one process would, every rank doing all of the selection's compute);
  * the same, computed from the formula at the paper's scale: b = 32,768, filter ratio 0.8
    (B = 163,840), d = 1,024, 256 ranks, learner and reference (two models), float32;
  * selection wall time with 1 process and with 2 (each process one thread, so 2 processes use
    twice the cores), and for gathering every embedding on 2.

    python benchmarks/distributed_selection.py [--size 4000] [--dim 64] [--repeats 3]

Writes benchmarks/results/distributed_selection.json (and the table as .txt) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import jestkit
from jestkit import Embeddings, SelectionConfig
from jestkit.core.naive import random_embeddings
from jestkit.core.sampler import chunk_sizes
from jestkit.dropin.distributed import Traffic, select_global
from jestkit.dropin.distributed.comm import Exchange

LOSSES = ("per_example", "sigmoid", "softmax")
FILTER_RATIO, N_CHUNKS, MODELS, FLOAT = 0.8, 16, 2, 4
PAPER = {"b": 32_768, "filter_ratio": 0.8, "dim": 1_024, "world_size": 256}
RESULTS = Path(__file__).parent / "results" / "distributed_selection.json"


# ----------------------------------------------------------------------------- the formula


def bytes_per_rank(loss: str, size: int, dim: int, world_size: int) -> dict[str, float]:
    """Bytes one rank receives per selection step, by what they carry (expected value: a chunk's
    members are assumed spread over the ranks evenly, each receiving c (W - 1) / W rows)."""
    W, n = world_size, size // world_size
    b = jestkit.core.validate.selected_size(size, FILTER_RATIO)
    out = {"check": (W - 1) * 2 * 8}
    if loss == "per_example":
        out["scores"] = (W - 1) * n * FLOAT  # the weighted scores, gathered once
        out["total"] = sum(out.values())
        out["gather_everything"] = (W - 1) * n * MODELS * FLOAT  # both models' losses
        return out
    row = 2 * MODELS * dim * FLOAT  # image + text embedding of both models
    sizes = chunk_sizes(b, N_CHUNKS)
    out["merge"] = sum((W - 1) * min(c, n) * (FLOAT + (8 if c < n else 0)) for c in sizes)
    out["chunks"] = sum(c * (W - 1) / W * row for c in sizes[:-1])
    if loss == "softmax":  # text embeddings of every candidate, column partials back to owners
        out["super_batch"] = (W - 1) * n * MODELS * dim * FLOAT + (W - 1) * MODELS * n * FLOAT
    out["total"] = sum(out.values())
    out["gather_everything"] = (W - 1) * n * row
    return out


# ----------------------------------------------------------------------------- the runs


def super_batch(loss: str, size: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if loss == "per_example":
        return torch.rand(size, generator=g) * 3, torch.rand(size, generator=g) * 3

    return random_embeddings(size, dim, g), random_embeddings(size, dim, g)


def shard(outputs, rank: int, world_size: int):
    n = len(outputs) // world_size
    sl = slice(rank * n, (rank + 1) * n)
    if isinstance(outputs, Embeddings):
        return Embeddings(
            outputs.image[sl], outputs.text[sl], outputs.logit_scale, outputs.logit_bias
        )
    return outputs[sl]


def packed(outputs) -> torch.Tensor:
    if isinstance(outputs, Embeddings):
        return torch.cat([outputs.image, outputs.text], 1)
    return outputs[:, None]


def config(loss: str) -> SelectionConfig:
    return SelectionConfig(loss=loss, filter_ratio=FILTER_RATIO, n_chunks=N_CHUNKS)


def one_process(size: int, dim: int, repeats: int) -> dict:
    out = {}
    for loss in LOSSES:
        learner, reference = super_batch(loss, size, dim)
        times = []
        for r in range(repeats + 1):
            gen = torch.Generator().manual_seed(r)
            start, cpu = time.perf_counter(), time.process_time()
            idx = jestkit.select(learner, reference, config(loss), generator=gen)
            times.append((time.perf_counter() - start, time.process_time() - cpu))
            if r == 0:
                out[loss] = {"selected": idx}
        out[loss]["time_s"] = statistics.median(t[0] for t in times[1:])  # the first warms up
        out[loss]["cpu_s"] = statistics.median(t[1] for t in times[1:])
    return out


def _jest(mine, loss: str, seed: int, traffic: Traffic):
    gen = torch.Generator().manual_seed(seed)
    return select_global(*mine, config(loss), generator=gen, traffic=traffic)


def _gather_everything(mine, loss: str, dim: int, seed: int):
    """The alternative: gather every rank's outputs, then select as one process would."""
    ex = Exchange()
    full = [ex.all_gather(packed(m)).flatten(0, 1) for m in mine]
    if loss == "per_example":
        full = [f[:, 0] for f in full]
    else:
        full = [Embeddings(f[:, :dim], f[:, dim:], 10.0, -10.0) for f in full]
    gen = torch.Generator().manual_seed(seed)
    return jestkit.select(*full, config(loss), generator=gen), ex.traffic


def _timed(fn, group=None):
    """fn(), its wall time and its CPU time, each the largest over the ranks (a step ends with
    the slowest rank). CPU time shows how the work splits even when the cores are shared."""
    dist.barrier(group)
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    took = [time.perf_counter() - start, time.process_time() - cpu]
    took = torch.tensor(took, dtype=torch.float64)
    dist.all_reduce(took, op=dist.ReduceOp.MAX, group=group)
    return result, took.tolist()


def _worker(rank, world_size, port, size, dim, repeats, out_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(minutes=5))
    results = {}
    for loss in LOSSES:
        learner, reference = super_batch(loss, size, dim)
        mine = shard(learner, rank, world_size), shard(reference, rank, world_size)
        times, gather_times = [], []
        for r in range(repeats + 1):
            traffic = Traffic()
            idx, t = _timed(partial(_jest, mine, loss, r, traffic))
            (idx_all, gathered), t_all = _timed(partial(_gather_everything, mine, loss, dim, r))
            if r == 0:
                results[loss] = {
                    "selected": idx,
                    "selected_gather_everything": idx_all,
                    "received": traffic.received,
                    "sent": traffic.sent,
                    "collectives": traffic.collectives,
                    "received_gather_everything": gathered.received,
                }
            else:
                times.append(t)
                gather_times.append(t_all)
        for key, runs in (("", times), ("_gather_everything", gather_times)):
            results[loss][f"time{key}_s"] = statistics.median(t[0] for t in runs)
            results[loss][f"cpu{key}_s"] = statistics.median(t[1] for t in runs)
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


def two_processes(size: int, dim: int, repeats: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "rank0.pt"
        mp.spawn(_worker, args=(2, port, size, dim, repeats, out_file), nprocs=2)
        return torch.load(out_file, weights_only=False)


# ----------------------------------------------------------------------------- the report


def _mb(x: float) -> str:
    return f"{x / 2**20:,.2f}" if x < 2**30 else f"{x / 2**30:,.2f} Gi"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=4000, help="super-batch B at small scale")
    ap.add_argument("--dim", type=int, default=64, help="embedding dimension at small scale")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)

    single = one_process(args.size, args.dim, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    multi = two_processes(args.size, args.dim, args.repeats)
    paper_size = round(PAPER["b"] / (1 - PAPER["filter_ratio"]))

    rows = []
    for loss in LOSSES:
        m, s = multi[loss], single[loss]
        small = bytes_per_rank(loss, args.size, args.dim, 2)
        paper = bytes_per_rank(loss, paper_size, PAPER["dim"], PAPER["world_size"])
        rows.append(
            {
                "loss": loss,
                "identical_to_one_process": bool(torch.equal(m["selected"], s["selected"])),
                "small_measured_bytes": m["received"],
                "small_formula_bytes": small["total"],
                "small_gather_everything_measured_bytes": m["received_gather_everything"],
                "small_gather_everything_formula_bytes": small["gather_everything"],
                "small_collectives": m["collectives"],
                "paper_bytes": paper,
                "time_1_process_s": s["time_s"],
                "time_2_processes_s": m["time_s"],
                "time_2_processes_gather_everything_s": m["time_gather_everything_s"],
                "cpu_1_process_s": s["cpu_s"],
                "cpu_2_processes_s": m["cpu_s"],
                "cpu_2_processes_gather_everything_s": m["cpu_gather_everything_s"],
            }
        )
    report = {
        "small_scale": {
            "B": args.size,
            "b": jestkit.core.validate.selected_size(args.size, FILTER_RATIO),
            "d": args.dim,
            "world_size": 2,
            "models": MODELS,
            "n_chunks": N_CHUNKS,
            "threads_per_process": 1,
        },
        "paper_scale": PAPER | {"B": paper_size, "n_chunks": N_CHUNKS, "models": MODELS},
        "bytes": "received by one rank from the others per selection step (float32 outputs)",
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".txt").write_text(table(report) + "\n")
    print(table(report))


def table(report: dict) -> str:
    s, p = report["small_scale"], report["paper_scale"]
    lines = [
        f"bytes received per rank per selection step (MiB; Gi = GiB), learnability, joint, "
        f"{N_CHUNKS} chunks, 2 models, float32",
        f"  small: B = {s['B']}, b = {s['b']}, d = {s['d']}, 2 gloo processes on CPU (measured)",
        f"  paper: B = {p['B']:,}, b = {p['b']:,}, d = {p['dim']:,}, {p['world_size']} ranks "
        "(formula)",
        "",
        f"{'loss':<12} {'small jestkit':>14} {'(formula)':>10} {'small gather-all':>17} "
        f"{'paper jestkit':>14} {'paper gather-all':>17} {'ratio':>6}",
    ]
    for r in report["rows"]:
        pb = r["paper_bytes"]
        lines.append(
            f"{r['loss']:<12} {_mb(r['small_measured_bytes']):>14} "
            f"{_mb(r['small_formula_bytes']):>10} "
            f"{_mb(r['small_gather_everything_measured_bytes']):>17} {_mb(pb['total']):>14} "
            f"{_mb(pb['gather_everything']):>17} {pb['gather_everything'] / pb['total']:>5.1f}x"
        )
    lines += ["", "paper scale, jestkit's bytes by what they carry (MiB):"]
    for r in report["rows"]:
        parts = {
            k: v for k, v in r["paper_bytes"].items() if k not in ("total", "gather_everything")
        }
        lines.append(f"  {r['loss']:<12} " + ", ".join(f"{k} {_mb(v)}" for k, v in parts.items()))
    lines += [
        "",
        "selection time per step, small scale, 1 thread per process; wall (s), and in brackets "
        "CPU (s) of the busiest rank:",
        f"{'loss':<12} {'1 process':>16} {'2 processes':>16} {'2, gather-all':>16} "
        f"{'same picks':>11}",
    ]
    for r in report["rows"]:
        cells = [
            f"{r[f'time_{k}_s']:.3f} ({r[f'cpu_{k}_s']:.3f})"
            for k in ("1_process", "2_processes", "2_processes_gather_everything")
        ]
        same = "yes" if r["identical_to_one_process"] else "NO"
        lines.append(f"{r['loss']:<12} " + " ".join(f"{c:>16}" for c in cells) + f" {same:>11}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
