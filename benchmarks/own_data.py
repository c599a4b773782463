"""`jestkit train` on shards with an open_clip model: the README's "Your own data and model"
figures.

Writes, under OUT (default runs/own_data): a curated set of 512 clean samples and a pool of 4,000
whose captions are wrong for 40 % (tests/shard_files.py: coloured shapes, captions naming colour
and shape; a wrong caption names another colour and shape), and a tiny open_clip SigLIP config
(two layers per tower, 32 x 32 images). Then, with the `jestkit` commands:

1. a reference trained uniformly on the curated shards;
2. `jestkit score` of the pool with it;
3. uniform and learnability-joint learners on the pool, the same steps and seed;

and prints each learner's share of wrong captions among the examples it trained on, its last
losses, FLOPs and seconds. On this project's machines open_clip's torchvision import needs the
test-only workaround (tests/dropin/torchvision_ops.py), which this script applies first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "dropin")]

from torchvision_ops import import_torchvision  # noqa: E402

import_torchvision()

import torch  # noqa: E402
from shard_files import TINY_SIG, is_noisy, write_shards  # noqa: E402

from jestkit.cli import main as jestkit  # noqa: E402


def run(*argv: str) -> float:
    start = time.perf_counter()
    if jestkit([*argv, "--quiet"]) != 0:
        raise SystemExit(f"jestkit {' '.join(argv)} failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/own_data")
    parser.add_argument("--steps", type=int, default=60, help="learner steps")
    parser.add_argument("--ref_steps", type=int, default=300, help="reference steps")
    args = parser.parse_args()
    out = Path(args.out)
    curated = write_shards(out / "curated", shards=1, per_shard=512, seed=1, first=10**6)
    pool = write_shards(out / "pool", shards=4, per_shard=1000, seed=0, noisy=True)
    config = out / "tiny-sig.json"
    config.write_text(json.dumps(TINY_SIG))
    model = ["--open_clip", str(config), "--training.batch_size", "32", "--training.lr", "3e-3"]
    common = [*model, "--training.steps", str(args.steps),
              "--training.checkpoint_every", str(args.steps)]  # fmt: skip
    seconds = {"reference": run("train", "--shards.pattern", curated, *model,
                                "--training.steps", str(args.ref_steps),
                                "--training.checkpoint_every", str(args.ref_steps),
                                "--selection.policy", "uniform", "--out", str(out / "ref"))}
    seconds["score"] = run("score", "--shards.pattern", pool, "--open_clip", str(config),
                           "--reference", str(out / "ref" / "checkpoint.pt"),
                           "--out", str(out / "score"))  # fmt: skip
    rows = []
    for name in ("uniform", "learnability-joint"):
        policy, _, method = name.partition("-")
        flags = ["--selection.policy", policy] + (["--selection.method", method] if method else [])
        seconds[name] = run("train", "--shards.pattern", pool, *common, *flags, "--reference",
                            str(out / "score"), "--out", str(out / name))  # fmt: skip
        result = json.loads((out / name / "result.json").read_text())
        state = torch.load(out / name / "checkpoint.pt", weights_only=True)
        ids = [int(i, 16) for step in state["stats"]["selected_ids"] for i in step]
        noisy = sum(is_noisy(i) for i in ids) / len(ids)
        last = sum(result["losses"][-10:]) / len(result["losses"][-10:])
        gflop = {k: v / 1e9 for k, v in result["flops"].items()}
        rows.append((name, noisy, last, gflop, result["train_seconds"]))
    print(f"reference: {args.ref_steps} uniform steps on 512 curated samples, "
          f"{seconds['reference']:.0f} s; pool of 4000 scored in {seconds['score']:.0f} s")
    print(f"{'policy':<20} {'wrong captions':>14} {'loss (last 10)':>14} "
          f"{'GFLOP train':>11} {'score':>7} {'seconds':>8}")
    for name, noisy, last, gflop, secs in rows:
        print(f"{name:<20} {noisy:>14.3f} {last:>14.3f} {gflop['train']:>11.1f} "
              f"{gflop['learner_score']:>7.1f} {secs:>8.1f}")


if __name__ == "__main__":
    main()
