"""What learner scoring costs, by view and precision, measured side by side.

For the demo's dual encoder and a larger one, scores a super-batch of B candidates with:
full resolution, Flexi-JEST's image view (patch 14), that plus the text view (half of each
caption's positions), each in float32 and under bfloat16 autocast. Reports FLOPs
(torch.utils.flop_counter) and wall time: the median of --repeats, interleaved so that every
variant sees the same machine load, and each variant's time as a ratio to full fp32 scoring
(median and spread of the per-repeat ratios).

    python benchmarks/scoring.py [--batch 640] [--repeats 7] [--threads 2]

Writes benchmarks/results/scoring.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from jestkit.engine.flops import count_no_grad_flops
from jestkit.models.factory import ModelConfig, build_model
from jestkit.models.view import View

MODELS = {
    "demo (dim 96, depth 3+1)": ModelConfig(),
    "larger (dim 256, depth 6+2)": ModelConfig(dim=256, depth=6, text_depth=2, heads=4,
                                               embed_dim=256),
}
VIEWS = {
    "full": View(),
    "flexi (patch 14)": View(patch_size=14),
    "flexi + text drop 0.5": View(patch_size=14, text_token_drop=0.5),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=640, help="B, candidates scored (b = 128 at 0.8)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/scoring.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 1, 28, 28, generator=g)
    tokens = torch.randint(1, 300, (args.batch, 16), generator=g)
    tokens[:, 11:] = 0  # captions of 11 words, as the longer generated captions
    rows = []
    for model_name, config in MODELS.items():
        torch.manual_seed(0)
        model = build_model(config, 300, "sigmoid").eval()
        variants = [(v, prec) for v in VIEWS for prec in ("fp32", "bf16")]

        def score(view, prec, model=model):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                return model.embeddings(images, tokens, VIEWS[view], g)

        for v, prec in variants:  # warm-up, and FLOPs (the same in both precisions)
            score(v, prec)
        times = {k: [] for k in variants}
        for _ in range(args.repeats):
            for k in variants:
                t = time.perf_counter()
                score(*k)
                times[k].append(time.perf_counter() - t)
        base = times[("full", "fp32")]
        for v, prec in variants:
            _, flops = count_no_grad_flops(model.embeddings, images, tokens, VIEWS[v], g)
            ratios = [t / b for t, b in zip(times[(v, prec)], base, strict=True)]
            rows.append({
                "model": model_name, "view": v, "precision": prec, "gflops": flops / 1e9,
                "seconds_median": statistics.median(times[(v, prec)]),
                "time_ratio_median": statistics.median(ratios),
                "time_ratio_min": min(ratios), "time_ratio_max": max(ratios),
            })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    head = (f"{'model':<28} {'view':<22} {'prec':<5} {'GFLOPs':>7} {'s (median)':>10} "
            f"{'time / full fp32':>22}")
    print(f"scoring B = {args.batch} candidates, {args.threads} threads, {args.repeats} repeats")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        lo, hi = r["time_ratio_min"], r["time_ratio_max"]
        spread = f"{r['time_ratio_median']:.2f} [{lo:.2f}, {hi:.2f}]"
        print(f"{r['model']:<28} {r['view']:<22} {r['precision']:<5} {r['gflops']:>7.2f} "
              f"{r['seconds_median']:>10.3f} {spread:>22}")


if __name__ == "__main__":
    main()
