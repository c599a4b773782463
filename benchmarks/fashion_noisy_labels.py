"""Noisy-label Fashion-MNIST: online batch selection policies through jestkit's drop-in API.

RHO-LOSS's setting (Mindermann et al., ICML 2022), written the way a user would: a plain
PyTorch loop over `jestkit.dropin.SelectiveLoader`. The training pool gets symmetric or
class-dependent label noise; a small clean holdout trains the reference (a SmallCNN), whose
per-example losses on the pool are cached by example id (jestkit.dropin.cache) and looked up by the
drop-in. Every policy trains the same initial learner on the same super-batches:

* uniform         b of each super-batch of B at random
* hard_learner    top-b learner loss (Selective Backprop's rule, deterministic form)
* easy_reference  top-b lowest reference loss
* learnability    top-b learner loss - reference loss (= RHO-LOSS)
* infobatch       InfoBatch-style pruning written here: each below-mean-loss ("well-learned")
                  candidate is pruned with probability --prune-ratio, b of the survivors are
                  drawn at random, and kept well-learned examples' losses are scaled by
                  1 / (1 - prune_ratio). It scores with the current learner's losses on the
                  super-batch (InfoBatch proper uses losses remembered from earlier epochs).

Reported for each (noise, rate, policy), over seeds: final test accuracy (clean test labels),
the steps and FLOPs to reach uniform's final accuracy and their ratios to uniform's, and the
share of mislabelled examples among those trained on. FLOPs come from
torch.utils.flop_counter.FlopCounterMode (one step of each kind measured, times the steps):
training plus the learner's scoring forward; the reference's training and its one pass over
the pool are reported separately (amortised over every run that reuses the cache).

Small default (symmetric 40 %, seeds 0 1, 200 steps, a 20k pool; about 13 minutes on one
busy CPU core):
    python benchmarks/fashion_noisy_labels.py
Full setting (hours on a CPU):
    python benchmarks/fashion_noisy_labels.py --noise symmetric class_dependent \
        --rates 0.2 0.4 --seeds 0 1 2 --steps 2000 --eval-every 50 --pool-size 0 \
        --test-size 10000 --threads 2 --out benchmarks/results/fashion_noisy_labels_full
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.flop_counter import FlopCounterMode

from jestkit import SelectionConfig
from jestkit.dropin import CachedReference, SelectiveLoader
from jestkit.dropin.cache import (
    CacheMeta,
    ReferenceCache,
    build_cache,
    fingerprint_ids,
    fingerprint_state_dict,
)
from jestkit.dropin.holdout import ReferenceTraining, fit_reference, per_example_losses
from jestkit.fashion.fashion_mnist import load_fashion_mnist
from jestkit.fashion.label_noise import add_label_noise
from jestkit.models.cnn import SmallCNN

POLICIES = ("uniform", "hard_learner", "easy_reference", "learnability", "infobatch")


class NoisyFashion(Dataset):
    """Examples as dicts: image (28, 28) uint8, (noisy) label, id, and whether it is noisy."""

    def __init__(self, images, labels, ids, noisy):
        self.images, self.labels, self.ids, self.noisy = images, labels, ids, noisy

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {
            "image": self.images[i],
            "label": self.labels[i],
            "id": self.ids[i],
            "noisy": self.noisy[i],
        }


def ce_loss(model, batch):
    return F.cross_entropy(model(batch["image"]), batch["label"], reduction="none")


def count(fn):
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, int(counter.get_total_flops())


@torch.no_grad()
def accuracy(model, images, labels, batch_size=2000):
    model.eval()
    hits = sum(
        (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(labels), batch_size)
    )
    model.train()
    return hits / len(labels)


def infobatch_batches(loader, model, b, prune_ratio, generator):
    """InfoBatch-style pruning on each super-batch: yields (sub-batch, loss weights)."""
    for batch in loader:
        with torch.no_grad():
            loss = ce_loss(model, batch)
        well = loss < loss.mean()
        keep = ~well | (torch.rand(len(loss), generator=generator) >= prune_ratio)
        survivors = keep.nonzero().squeeze(1)
        if len(survivors) < b:  # too few survivors: top up with pruned ones
            pruned = (~keep).nonzero().squeeze(1)
            extra = pruned[torch.randperm(len(pruned), generator=generator)[: b - len(survivors)]]
            survivors = torch.cat([survivors, extra])
        idx = survivors[torch.randperm(len(survivors), generator=generator)[:b]]
        weight = torch.where(well[idx], 1.0 / (1.0 - prune_ratio), 1.0)
        yield {k: v[idx] for k, v in batch.items()}, weight


def train_policy(policy, args, pool, ref_cache, init_state, test, seed):
    """One learner trained for args.steps steps under `policy`; returns its curve and costs."""
    model = SmallCNN()
    model.load_state_dict(init_state)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    big = round(args.batch_size / (1.0 - args.filter_ratio))
    loader_gen = torch.Generator().manual_seed(1000 + seed)  # same super-batches for every policy
    loader = DataLoader(pool, batch_size=big, shuffle=True, drop_last=True, generator=loader_gen)

    def learner(image, label, **_):
        return F.cross_entropy(model(image), label, reduction="none")

    if policy == "infobatch":
        gen = torch.Generator().manual_seed(seed)
        make_iter = lambda: infobatch_batches(loader, model, args.batch_size, args.prune_ratio, gen)  # noqa: E731
    else:
        config = SelectionConfig(
            loss="per_example", policy=policy, method="independent", temperature=0.0,
            filter_ratio=1.0 - args.batch_size / big,
        )  # fmt: skip
        selective = SelectiveLoader(
            loader, learner, CachedReference(ref_cache, ids="id"), config, seed=seed
        )
        assert selective.b == args.batch_size and len(selective) == len(loader)
        make_iter = lambda: ((sub, None) for sub in selective)  # noqa: E731

    curve = {"step": [0], "acc": [accuracy(model, *test)]}
    noisy_seen = seen = 0
    score_flops = train_flops = None
    step, t0 = 0, time.perf_counter()
    while step < args.steps:
        it = make_iter()
        while step < args.steps:
            if score_flops is None:  # measure the first step's scoring cost
                try:
                    (batch, weight), score_flops = count(lambda it=it: next(it))
                except StopIteration:
                    break
            else:
                try:
                    batch, weight = next(it)
                except StopIteration:
                    break

            def train_step(batch=batch, weight=weight):
                losses = F.cross_entropy(model(batch["image"]), batch["label"], reduction="none")
                loss = losses.mean() if weight is None else (losses * weight).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            if train_flops is None:
                _, train_flops = count(train_step)
            else:
                train_step()
            noisy_seen += int(batch["noisy"].sum())
            seen += len(batch["noisy"])
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                curve["step"].append(step)
                curve["acc"].append(accuracy(model, *test))
    flops_per_step = score_flops + train_flops
    return {
        "curve": curve,
        "flops": [s * flops_per_step for s in curve["step"]],
        "score_flops_per_step": score_flops,
        "train_flops_per_step": train_flops,
        "noisy_share": noisy_seen / max(seen, 1),
        "seconds": time.perf_counter() - t0,
    }


def first_reach(steps, accs, target):
    for s, a in zip(steps, accs, strict=True):
        if a >= target:
            return s
    return None


def make_reference(args, images, labels, hold, generator):
    """A SmallCNN trained on the clean holdout; (model, its training FLOPs)."""
    n = len(labels)
    clean = NoisyFashion(images, labels, torch.arange(n), torch.zeros(n, dtype=torch.bool))
    config = ReferenceTraining(epochs=args.ref_epochs, batch_size=128, lr=1e-3)
    xb, yb = images[hold[:128]], labels[hold[:128]]
    _, step_flops = count(lambda: F.cross_entropy(SmallCNN()(xb), yb).backward())
    model = fit_reference(SmallCNN(), Subset(clean, hold.tolist()), ce_loss, config, generator)
    return model, step_flops / len(xb) * len(hold) * args.ref_epochs


def cache_reference_losses(path, reference, pool, pool_ids, meta_extra):
    """The reference's losses on the pool in a ReferenceCache keyed by id; (cache, FLOPs)."""
    meta = CacheMeta(
        fingerprint_state_dict(reference.state_dict()),
        fingerprint_ids(pool_ids, *meta_extra),
        {"loss": []},
    )
    losses = per_example_losses(reference, pool, ce_loss)
    position = torch.empty(int(pool_ids.max()) + 1, dtype=torch.long)
    position[pool_ids] = torch.arange(len(pool_ids))
    build_cache(path, pool_ids, lambda ids: {"loss": losses[position[ids]]}, meta, progress=False)
    cache = ReferenceCache.open(path, meta.model_fingerprint, meta.data_fingerprint)
    _, fwd = count(lambda: per_example_losses(reference, Subset(pool, range(256)), ce_loss))
    return cache, fwd / 256 * len(pool_ids)


def run(args):
    torch.set_num_threads(args.threads)
    train_x, train_y = load_fashion_mnist("train", args.data_dir)
    test_x, test_y = load_fashion_mnist("test", args.data_dir)
    test_pick = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(12345))
    test = (test_x[test_pick[: args.test_size]], test_y[test_pick[: args.test_size]])
    results = {"args": vars(args), "runs": [], "reference": []}
    tmp = tempfile.TemporaryDirectory(prefix="jestkit-noisy-")

    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(train_y), generator=g)
        hold, pool_ids = perm[: args.holdout], perm[args.holdout :]
        if args.pool_size:
            pool_ids = pool_ids[: args.pool_size]
        t0 = time.perf_counter()
        torch.manual_seed(10_000 + seed)
        reference, ref_train_flops = make_reference(args, train_x, train_y, hold, g)
        ref_acc = accuracy(reference, test_x, test_y)
        print(f"seed {seed}: reference on {len(hold)} clean examples, test acc {ref_acc:.4f} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)  # fmt: skip
        torch.manual_seed(seed)
        init_state = SmallCNN().state_dict()

        for kind in args.noise:
            for rate in args.rates:
                ng = torch.Generator().manual_seed(100 * seed + round(100 * rate))
                noisy_y, is_noisy = add_label_noise(train_y[pool_ids], rate, kind, generator=ng)
                pool = NoisyFashion(train_x[pool_ids], noisy_y, pool_ids, is_noisy)
                path = Path(tmp.name) / f"ref-s{seed}-{kind}-{rate}"
                cache, cache_flops = cache_reference_losses(
                    path, reference, pool, pool_ids, (kind, str(rate), str(seed))
                )
                results["reference"].append({
                    "seed": seed, "noise": kind, "rate": rate, "holdout": len(hold),
                    "test_acc": ref_acc, "train_flops": ref_train_flops,
                    "cache_flops": cache_flops,
                })  # fmt: skip
                for policy in args.policies:
                    r = train_policy(policy, args, pool, cache, init_state, test, seed)
                    r.update(seed=seed, noise=kind, rate=rate, policy=policy)
                    results["runs"].append(r)
                    print(f"  {kind} {rate:.0%} seed {seed} {policy:>14}: final acc "
                          f"{r['curve']['acc'][-1]:.4f}, noisy share {r['noisy_share']:.3f} "
                          f"({r['seconds']:.0f}s)", flush=True)  # fmt: skip
    tmp.cleanup()
    results["summary"] = summarize(results["runs"], args)
    return results


def summarize(runs, args):
    rows = []
    groups = sorted({(r["noise"], r["rate"]) for r in runs})
    for kind, rate in groups:
        by = {(r["policy"], r["seed"]): r for r in runs if (r["noise"], r["rate"]) == (kind, rate)}
        for policy in args.policies:
            finals, steps, flops, ratios, fratios, shares, at_flops = [], [], [], [], [], [], []
            for seed in args.seeds:
                r, u = by.get((policy, seed)), by.get(("uniform", seed))
                if r is None:
                    continue
                finals.append(r["curve"]["acc"][-1])
                shares.append(r["noisy_share"])
                if u is None:
                    continue
                # accuracy at uniform's whole budget in FLOPs: the last eval within it
                within = [a for a, f in zip(r["curve"]["acc"], r["flops"], strict=True)
                          if f <= u["flops"][-1]]  # fmt: skip
                at_flops.append(within[-1])
                target = u["curve"]["acc"][-1]
                s_u = first_reach(u["curve"]["step"], u["curve"]["acc"], target)
                f_u = u["flops"][u["curve"]["step"].index(s_u)]
                s = first_reach(r["curve"]["step"], r["curve"]["acc"], target)
                steps.append(s)
                if s is None:
                    flops.append(None)
                    ratios.append(None)
                    fratios.append(None)
                    continue
                f = r["flops"][r["curve"]["step"].index(s)]
                flops.append(f)
                ratios.append(s_u / s if s else math.inf)
                fratios.append(f_u / f if f else math.inf)
            rows.append({
                "noise": kind, "rate": rate, "policy": policy,
                "final_acc_mean": float(np.mean(finals)), "final_acc_std": float(np.std(finals)),
                "steps_to_uniform": steps, "flops_to_uniform": flops,
                "step_speedup": ratios, "flop_speedup": fratios,
                "noisy_share_mean": float(np.mean(shares)),
                "acc_at_uniform_flops_mean": float(np.mean(at_flops)) if at_flops else None,
            })  # fmt: skip
    return rows


def fmt_ratio(values):
    if not values:
        return "-"
    if any(v is None for v in values):
        reached = sum(v is not None for v in values)
        return f"not reached ({reached}/{len(values)})"
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"{np.mean(values):.2f}x ± {np.std(values):.2f}"


def print_table(summary):
    head = (f"{'noise':<16}{'rate':>5}  {'policy':<15}{'final acc':>16}  {'steps to unif.':>16}"
            f"  {'step speedup':>16}  {'FLOP speedup':>16}  {'noisy share':>11}"
            f"  {'acc @ unif. FLOPs':>17}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for row in summary:
        steps = row["steps_to_uniform"]
        steps_s = "-" if not steps else " ".join("-" if s is None else str(s) for s in steps)
        acc = f"{row['final_acc_mean']:.4f} ± {row['final_acc_std']:.4f}"
        print(f"{row['noise']:<16}{row['rate']:>5.0%}  {row['policy']:<15}{acc:>16}  "
              f"{steps_s:>16}  {fmt_ratio(row['step_speedup']):>16}  "
              f"{fmt_ratio(row['flop_speedup']):>16}  "
              f"{row['noisy_share_mean']:>11.3f}  "
              f"{row['acc_at_uniform_flops_mean']:>17.4f}")  # fmt: skip


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["noise"], r["rate"]) for r in results["runs"]})
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.8 * len(groups)), squeeze=False)
    colors = dict(zip(POLICIES, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for row, (kind, rate) in enumerate(groups):
        for policy in results["args"]["policies"]:
            runs = [r for r in results["runs"]
                    if (r["noise"], r["rate"], r["policy"]) == (kind, rate, policy)]  # fmt: skip
            if not runs:
                continue
            steps = np.array(runs[0]["curve"]["step"])
            acc = np.array([r["curve"]["acc"] for r in runs])
            flops = np.array(runs[0]["flops"], dtype=float)
            for ax, x in ((axes[row, 0], steps), (axes[row, 1], flops)):
                ax.plot(x, acc.mean(0), label=policy, color=colors[policy])
                if len(runs) > 1:
                    ax.fill_between(x, acc.min(0), acc.max(0), alpha=0.15, color=colors[policy])
        axes[row, 0].set(xlabel="training steps", ylabel="test accuracy",
                         title=f"{kind} noise {rate:.0%}")  # fmt: skip
        axes[row, 1].set(xlabel="FLOPs (training + scoring)", ylabel="test accuracy",
                         title=f"{kind} noise {rate:.0%}")  # fmt: skip
        for ax in axes[row]:
            ax.set_ylim(bottom=0.1)  # chance level
            ax.grid(alpha=0.3)
        axes[row, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--noise", nargs="+", default=["symmetric"],
                   choices=["symmetric", "class_dependent"])  # fmt: skip
    p.add_argument("--rates", nargs="+", type=float, default=[0.4])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--steps", type=int, default=200, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=32, help="b, examples trained on per step")
    p.add_argument("--filter-ratio", type=float, default=0.9, help="B = b / (1 - filter_ratio)")
    p.add_argument("--prune-ratio", type=float, default=0.5, help="infobatch's pruning share")
    p.add_argument("--holdout", type=int, default=2000, help="clean examples for the reference")
    p.add_argument("--ref-epochs", type=int, default=10)
    p.add_argument("--pool-size", type=int, default=20000, help="noisy pool cap (0: all 58k)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--test-size", type=int, default=2000, help="test images evaluated (<=10000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (shared CPUs: 1)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="benchmarks/results/fashion_noisy_labels")
    p.add_argument("--from-json", default=None, help="re-summarise and re-plot a finished run")
    args = p.parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        results["summary"] = summarize(results["runs"], argparse.Namespace(**results["args"]))
        report(results, Path(results["args"]["out"]))
        return results
    if "uniform" not in args.policies:
        args.policies = ["uniform", *args.policies]

    t0 = time.perf_counter()
    results = run(args)
    results["seconds"] = time.perf_counter() - t0
    report(results, Path(args.out))
    return results


def report(results, out):
    """Print the table, write the JSON and the plot."""
    print()
    print_table(results["summary"])
    ref = results["reference"]
    print(f"\nreference: test acc {np.mean([r['test_acc'] for r in ref]):.4f}, training "
          f"{np.mean([r['train_flops'] for r in ref]):.3g} FLOPs, caching the pool "
          f"{np.mean([r['cache_flops'] for r in ref]):.3g} FLOPs "
          f"(reported separately)")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')} "
          f"(run took {results['seconds']:.0f}s)")  # fmt: skip


if __name__ == "__main__":
    main()
