"""What scoring a super-batch costs an open_clip learner, per Flexi-JEST view
(jestkit.models.view.View through jestkit.openclip.views), measured side by side.

Models (random weights: cost does not depend on them): the tiny SigLIP config of the tests and
the own-data benchmark (tests/shard_files.py TINY_SIG: 32 x 32 images, patch 8, 16 text
positions), and open_clip's ViT-B-32 and ViT-B-16 configs (224 x 224 images, 77 text
positions). ViT-B-32's coarse view is patch 56, not 64, which does not divide 224 (7 x 7 ->
4 x 4 tokens); ViT-B-16's is patch 32, the paper's 2x (14 x 14 -> 7 x 7).

FLOPs: torch.utils.flop_counter with jestkit's formulas for the CPU's fused attention
(jestkit.engine.flops), counted on batches of n and 2n: a scoring pass costs exactly
fixed + B * per_candidate (the fixed part is the patch embedding's PI-resize, once per pass),
so the table gives GFLOPs per candidate at a super-batch of --super_batch, resize included.
Time: the median of --repeats scoring passes per timed view, interleaved so that every view sees
the same machine load, and each view's time as a ratio to the full forward's (median [min, max]
of the per-repeat ratios), beside the FLOPs ratio at the same batch; for the tiny model at
B = --super_batch, for ViT-B-32 on --big_batch candidates (the CPU cannot do a real super-batch
in reasonable time; at a small batch the once-per-pass PI-resize weighs more); ViT-B-16 is not
timed.

    nice -n 19 python benchmarks/openclip_scoring.py [--repeats 5] [--threads 2]

Writes benchmarks/results/openclip_scoring.json and .txt, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from shard_files import TINY_SIG  # noqa: E402

from jestkit.engine.flops import count_no_grad_flops  # noqa: E402
from jestkit.models.view import View  # noqa: E402
from jestkit.openclip.dual import OpenClipDual  # noqa: E402
from jestkit.openclip.model import create_model  # noqa: E402

# model -> (config, image size, words per caption, {view name: View}, the views timed)
MODELS = {
    "tiny SigLIP (patch 8, 32 px)": (TINY_SIG, 32, 8, {
        "full": View(),
        "patch 16": View(patch_size=16),
        "text drop 0.5": View(text_token_drop=0.5),
        "patch 16 + text drop 0.5": View(patch_size=16, text_token_drop=0.5),
    }, ("full", "patch 16", "text drop 0.5", "patch 16 + text drop 0.5")),
    "ViT-B-32 (patch 32, 224 px)": ("ViT-B-32", 224, 20, {
        "full": View(),
        "patch 56": View(patch_size=56),
        "text drop 0.5": View(text_token_drop=0.5),
        "patch 56 + text drop 0.5": View(patch_size=56, text_token_drop=0.5),
        "patch 56 + text drop 0.75": View(patch_size=56, text_token_drop=0.75),
        "patch 56 + image/text drop 0.5": View(56, 0.5, 0.5),
    }, ("full", "patch 56", "patch 56 + text drop 0.5", "patch 56 + image/text drop 0.5")),
    "ViT-B-16 (patch 16, 224 px)": ("ViT-B-16", 224, 20, {
        "full": View(),
        "patch 32": View(patch_size=32),
        "patch 32 + text drop 0.5": View(patch_size=32, text_token_drop=0.5),
    }, ()),
}  # fmt: skip


def inputs(n: int, size: int, length: int, words: int, seed: int = 0):
    """n images and n CLIP-tokenised captions of `words` words (SOT, words, EOT, pads)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    tokens = torch.zeros(n, length, dtype=torch.long)
    tokens[:, 0] = 49406
    tokens[:, 1 : words + 1] = torch.randint(1, 40000, (n, words), generator=g)
    tokens[:, words + 1] = 49407
    return images, tokens


def flops_of_a_pass(model, view, size, length, words, n) -> tuple[int, int]:
    """(FLOPs per candidate, fixed FLOPs per pass), from counts on batches of n and 2n."""
    g = torch.Generator().manual_seed(0)
    counts = []
    for batch in (n, 2 * n):
        images, tokens = inputs(batch, size, length, words)
        counts.append(count_no_grad_flops(model.embeddings, images, tokens, view, g)[1])
    per = (counts[1] - counts[0]) // n
    return per, counts[0] - n * per


def per_candidate(flops: tuple[int, int], batch: int) -> float:
    """FLOPs per candidate of a pass over `batch` candidates, from flops_of_a_pass."""
    per, fixed = flops
    return (fixed + batch * per) / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--super_batch", type=int, default=640, help="B, candidates per scoring pass")
    p.add_argument("--big_batch", type=int, default=32, help="candidates timed for ViT-B-32")
    p.add_argument("--flops_batch", type=int, default=2, help="n of the FLOP counts (n and 2n)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/openclip_scoring.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, (config, size, words, views, timed) in MODELS.items():
        torch.manual_seed(0)
        model = OpenClipDual(create_model(config), str(name)).eval()
        length = model.model.positional_embedding.shape[0]
        for view in views.values():
            model.check_view(view)
        flops = {v: flops_of_a_pass(model, view, size, length, words, args.flops_batch)
                 for v, view in views.items()}  # fmt: skip
        n = args.super_batch if size <= 32 else args.big_batch  # candidates timed
        times = {v: [] for v in timed}
        if timed:
            images, tokens = inputs(n, size, length, words)
            g = torch.Generator().manual_seed(0)
            for v in timed:  # warm-up (and pinv(R) computed)
                model.embeddings(images, tokens, views[v], g)
            for _ in range(args.repeats):
                for v in timed:
                    start = time.perf_counter()
                    model.embeddings(images, tokens, views[v], g)
                    times[v].append(time.perf_counter() - start)
        for v in views:
            big = per_candidate(flops[v], args.super_batch)
            row = {
                "model": name, "view": v, "gflops_per_candidate": big / 1e9,
                "fixed_gflops_per_pass": flops[v][1] / 1e9,
                "flops_ratio": big / per_candidate(flops["full"], args.super_batch),
            }  # fmt: skip
            if v in timed:
                ratios = [t / b for t, b in zip(times[v], times["full"], strict=True)]
                at_n = per_candidate(flops[v], n) / per_candidate(flops["full"], n)
                row.update({
                    "timed_batch": n,
                    "flops_ratio_timed_batch": at_n,
                    "seconds_median": statistics.median(times[v]),
                    "time_ratio_median": statistics.median(ratios),
                    "time_ratio_min": min(ratios), "time_ratio_max": max(ratios),
                })  # fmt: skip
            rows.append(row)
    lines = [
        f"open_clip scoring per view: GFLOPs per candidate at B = {args.super_batch} (PI-resize "
        f"included); time of a pass over `batch` candidates on {args.threads} CPU threads, "
        f"{args.repeats} interleaved repeats, beside the FLOPs ratio at that batch",
        f"{'model':<29} {'view':<31} {'GFLOPs/cand':>11} {'x full':>7} {'batch':>6} "
        f"{'FLOPs x full':>12} {'s (median)':>10} {'time x full':>20}",
    ]
    lines.append("-" * len(lines[1]))
    for r in rows:
        batch = flops_at_batch = seconds = spread = "-"
        if "seconds_median" in r:
            batch, flops_at_batch = str(r["timed_batch"]), f"{r['flops_ratio_timed_batch']:.3f}"
            seconds = f"{r['seconds_median']:.3f}"
            spread = (f"{r['time_ratio_median']:.2f} [{r['time_ratio_min']:.2f}, "
                      f"{r['time_ratio_max']:.2f}]")  # fmt: skip
        lines.append(
            f"{r['model']:<29} {r['view']:<31} {r['gflops_per_candidate']:>11.4f} "
            f"{r['flops_ratio']:>7.3f} {batch:>6} {flops_at_batch:>12} {seconds:>10} {spread:>20}"
        )
    table = "\n".join(lines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"torch": torch.__version__, "open_clip": open_clip.__version__}
    out.write_text(json.dumps({"args": vars(args), "versions": info, "rows": rows}, indent=1))
    out.with_suffix(".txt").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
