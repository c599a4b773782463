"""Did JEST beat uniform at equal compute on your own data? `jestkit train` on shards with a tiny
open_clip model, held-out evaluation, and speed-ups read off uniform's budget-matched frontier.

Writes, under OUT (default runs/own_data), with tests/shape_scenes.py's writers (JPEG scenes,
64 x 64 px: one coloured shape, captions naming its colour, shape, position, background and its
texture, "a red ring at the top left on a noisy grey background"):
  curated/   --curated clean samples (default 2,000)
  pool/      --pool samples (default 10,000), 40 % with a caption wrong in every attribute
             (40 % of every class: shape_scenes.is_noisy)
  eval/shapes/    a zero-shot set in clip_benchmark's layout: 30 classes (6 colours x 5 shapes,
                  "red ring", ...), 24 templates written as the captions are ("a {c} at
                  the top left on a plain dark background", ...), 1,200 held-out images (40
                  a class)
  eval/captions/  a retrieval set in clip_benchmark's layout: 720 held-out images, one caption
                  each, every caption different (every colour, shape, position, background
                  and texture once)
  tiny-sig.json   a two-layer open_clip SigLIP config, 32 x 32 images (open_clip's transform
                  resizes the 64 x 64 JPEGs)
and OUT/READY once the data, the reference and its scores exist.
Then, with the `jestkit` commands, each run cached (a run with a result.json is not run again;
a run cut short is started afresh):
  1. the reference: uniform on the curated shards; `jestkit score` of the pool with it;
  2. uniform on the pool at several budgets, each its own run and schedule (the frontier);
  3. each selecting policy at each of --steps: by default JEST (learnability-joint) and
     Flexi-JEST ("flexi-" before the policy: the learner scores through a cheaper view of
     itself, patch 16 instead of 8 and half of each caption's positions, FLEXI_FLAGS, and trains
     half of each sub-batch at the coarse patch size); "draft-" after "flexi-" also decodes
     the candidates no finer than that view scores them (--shards.draft_side auto: libjpeg's
     1/4 scale of the 64-px JPEGs, the selected ones again in full), read against the same
     run without it, seed by seed; "filter" is the reference's offline filter as `jestkit
     plan` runs it: uniform on the share KEEP (0.3) of the pool the reference's score ranks
     highest (`jestkit score --keep 0.3 --subset_shards OUT/kept`); ":N/M" after a policy: at
     those steps only;
every learner run once per seed (--seeds: initial weights, data order, selection noise). It
reads the speed-up in steps and FLOPs (training and learner scoring) of each policy's seed mean
off uniform's seed-mean frontier of the held-out zero-shot top-1 (and of retrieval
mean_recall@1) with jestkit.payoff.
Prints a table, writes OUT/results.{json,txt,png} and benchmarks/results/own_data.{json,txt,png}
(the frontier picture); each run's OUT/RUN/curves.png draws its evaluations.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from shape_scenes import (  # noqa: E402
    CLASSES,
    PERIOD,
    TEMPLATES,
    is_noisy,
    write_scene_eval_set,
    write_scene_shards,
)
from shard_files import TINY_SIG  # noqa: E402

from jestkit.cli import main as jestkit  # noqa: E402
from jestkit.engine.checkpoint import load_checkpoint  # noqa: E402
from jestkit.payoff.report import compare, plot, run_cost  # noqa: E402
from jestkit.plan.rules import METHODS  # noqa: E402

ZERO_SHOT, RETRIEVAL = "shapes/acc1", "captions/mean_recall@1"
ZERO_SHOT_IMAGES = 40 * len(CLASSES)  # 1,200 held-out images, 40 of each class
RETRIEVAL_IMAGES = PERIOD  # 720 held-out images, every caption once
RESULTS = ROOT / "benchmarks" / "results"
KEEP = METHODS["filter"][2]  # the offline filter's kept share, as jestkit plan runs it
# Flexi-JEST's scoring view of the tiny config (patch 8 on 32 x 32 images: 16 patches): patch 16
# (4 patches) and half of the 16 text positions, half of each trained sub-batch at patch 16
FLEXI_FLAGS = ("--scoring.patch_size", "16", "--scoring.text_token_drop", "0.5",
               "--scoring.multires_fraction", "0.5")  # fmt: skip


def cached_run(folder: Path, *argv: str) -> dict:
    """`jestkit ARGV --out FOLDER`, unless FOLDER already holds its result.json."""
    if (folder / "result.json").is_file():
        return json.loads((folder / "result.json").read_text())
    shutil.rmtree(folder, ignore_errors=True)  # a run cut short starts afresh
    if jestkit([*argv, "--out", str(folder), "--quiet"]) != 0:
        raise SystemExit(f"jestkit {' '.join(argv)} failed")
    return json.loads((folder / "result.json").read_text())


def final_eval(folder: Path, data: dict) -> dict:
    """The run's final checkpoint evaluated by `jestkit eval` on the held-out sets as they are
    written now (FOLDER/eval-HASH.json, HASH: the zero-shot templates'), so that every run is
    read with the same prompts, those cached before the templates changed too."""
    templates = (Path(data["shapes"]) / "zeroshot_classification_templates.txt").read_bytes()
    out = folder / f"eval-{hashlib.sha256(templates).hexdigest()[:8]}.json"
    if not out.is_file() and jestkit(["eval", "--checkpoint", str(folder / "checkpoint.pt"),
                                      "--eval.zeroshot", f"shapes={data['shapes']}",
                                      "--eval.retrieval", f"captions={data['captions']}",
                                      "--out", str(out), "--quiet"]) != 0:  # fmt: skip
        raise SystemExit(f"jestkit eval of {folder} failed")
    return json.loads(out.read_text())["metrics"]


def wrong_caption_share(run_dir: Path) -> float:
    """The share of trained examples whose caption is wrong (is_noisy), from the checkpoint."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    ids = [int(i, 16) for step in state["stats"]["selected_ids"] for i in step]
    return sum(is_noisy(i) for i in ids) / len(ids)


def export_kept(out: Path, pool: str) -> str:
    """The offline filter's kept shards (OUT/kept, written once), as `jestkit plan` runs the
    filter: the share KEEP of the pool the reference's score ranks highest, exported by
    `jestkit score --keep KEEP --subset_shards` from the cached score. Returns their pattern."""
    argv = ["score", "--shards.pattern", pool, "--open_clip", str(out / "tiny-sig.json"),
            "--reference", str(out / "reference" / "checkpoint.pt"), "--out", str(out / "score"),
            "--keep", f"{KEEP:g}", "--subset_shards", str(out / "kept"), "--quiet"]  # fmt: skip
    if not (out / "kept" / "kept.json").is_file() and jestkit(argv) != 0:
        raise SystemExit("jestkit score --keep failed")
    return str(out / "kept" / "kept-*.tar")


def write_data(out: Path, pool: int, curated: int) -> dict:
    """The shards and held-out sets (shape_scenes.py), written once: OUT/data.json lists them."""
    if not (out / "data.json").is_file():
        paths = {
            "curated": write_scene_shards(out / "curated", shards=1, per_shard=curated, seed=1,
                                          first=10**6),
            "pool": write_scene_shards(out / "pool", shards=pool // 1000, per_shard=1000,
                                       seed=0, noisy=True),
            "shapes": write_scene_eval_set(out / "eval" / "shapes", "zeroshot", ZERO_SHOT_IMAGES,
                                           first=10**7),
            "captions": write_scene_eval_set(out / "eval" / "captions", "retrieval",
                                             RETRIEVAL_IMAGES, first=2 * 10**7),
        }  # fmt: skip
        (out / "tiny-sig.json").write_text(json.dumps(TINY_SIG))
        (out / "data.json").write_text(json.dumps(paths))
    return json.loads((out / "data.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/own_data")
    parser.add_argument("--steps", default="75,150",
                        help="the selecting policies' budgets, comma-separated")  # fmt: skip
    parser.add_argument("--budgets", default="0.5,1,2,4,8",
                        help="uniform's budgets, multiples of the first of --steps")  # fmt: skip
    parser.add_argument(
        "--policies",
        default="learnability-joint,flexi-learnability-joint",
        help="'flexi-' before a policy: scored through FLEXI_FLAGS's view; 'flexi-draft-': "
        "its candidates decoded at that view's scale too; ':N' after one: at N steps only",
    )
    parser.add_argument("--ref_steps", type=int, default=400, help="reference steps")
    parser.add_argument(
        "--pool",
        type=int,
        default=10_000,
        help="pool samples (a multiple of 1,000: shards of 1,000)",
    )
    parser.add_argument("--curated", type=int, default=2_000, help="curated samples")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", default="0,1,2",
                        help="seeds of every learner run (initial weights, data order, "
                             "selection noise); results are their means")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads: one, as on a machine shared with other jobs, where "
                             "more threads contend and slow every step")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps_list = [int(s) for s in args.steps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.pool < 1000 or args.pool % 1000:
        raise SystemExit(f"--pool must be a positive multiple of 1,000, not {args.pool}")
    data = write_data(out, args.pool, args.curated)
    evals = ["--eval.zeroshot", f"shapes={data['shapes']}",
             "--eval.retrieval", f"captions={data['captions']}"]  # fmt: skip
    model = ["--open_clip", str(out / "tiny-sig.json"), "--training.batch_size",
             str(args.batch_size), "--training.lr", str(args.lr)]  # fmt: skip

    def train(name: str, shards: str, steps: int, eval_every: int, *flags: str) -> dict:
        """The cached run, its final metrics those of final_eval; its evaluations during the
        run (which may have used older templates) are left out."""
        r = cached_run(out / name, "train", "--shards.pattern", shards, *model, *evals,
                       "--training.steps", str(steps), "--training.checkpoint_every",
                       str(steps), "--training.eval_every", str(eval_every), *flags)  # fmt: skip
        return r | {"final": final_eval(out / name, data), "history": []}

    def seeded(name: str, steps: int, eval_every: int, *flags: str, shards: str = "") -> list[dict]:
        """The run on the pool (or `shards`) once per seed (folders NAME, NAME-s1, ...)."""
        rs = []
        for seed in seeds:
            folder = name if seed == 0 else f"{name}-s{seed}"
            rs.append(train(folder, shards or data["pool"], steps, eval_every, "--training.seed",
                            str(seed), "--shards.seed", str(seed), *flags))  # fmt: skip
            rs[-1] |= {"seed": seed, "wrong_captions": wrong_caption_share(out / folder)}
        return rs

    reference = train("reference", data["curated"], args.ref_steps, args.ref_steps,
                      "--selection.policy", "uniform")  # fmt: skip
    if not (out / "score" / "reference.json").is_file():
        shutil.rmtree(out / "score", ignore_errors=True)
        if jestkit(["score", "--shards.pattern", data["pool"], "--open_clip",
                    str(out / "tiny-sig.json"), "--reference", str(out / "reference" /
                    "checkpoint.pt"), "--out", str(out / "score"), "--quiet"]) != 0:  # fmt: skip
            raise SystemExit("jestkit score failed")
    (out / "READY").touch()  # data.json, reference/ and score/ exist: `jestkit plan` can read them
    uniform = []  # every seed's run: the frontier is their mean per budget
    for multiple in sorted(float(m) for m in args.budgets.split(",")):
        steps = max(1, round(multiple * steps_list[0]))
        uniform += seeded(f"uniform-{steps}", steps, steps, "--selection.policy", "uniform")
    runs, spread = {}, {}
    data_cpu = {}  # each policy run's data-phase CPU seconds per step, per seed
    for entry in filter(None, args.policies.split(",")):
        policy_name, _, only = entry.partition(":")  # POLICY:N/M/...: at those steps only
        budgets = [int(n) for n in only.split("/")] if only else steps_list
        shards = ""  # the pool
        if policy_name == "filter":  # uniform on the kept shards
            shards, flags = export_kept(out, data["pool"]), ("--selection.policy", "uniform")
        else:
            flexi = policy_name.startswith("flexi-")
            drafted = policy_name.removeprefix("flexi-").startswith("draft-")
            if drafted and not flexi:
                raise SystemExit(f"{policy_name}: 'draft-' needs 'flexi-' before it (a coarse "
                                 "view)")  # fmt: skip
            base = policy_name.removeprefix("flexi-").removeprefix("draft-")
            policy, _, method = base.partition("-")
            flags = ("--selection.policy", policy, "--selection.method", method, "--reference",
                     str(out / "score"), *(FLEXI_FLAGS if flexi else ()),
                     *(("--shards.draft_side", "auto") if drafted else ()))  # fmt: skip
        for steps in budgets:
            name = f"{policy_name}-{steps}"
            rs = seeded(name, steps, max(1, steps // 4), *flags, shards=shards)
            runs[name], spread[name] = mean_run(rs), [r["final"] for r in rs]
            data_cpu[name] = [r["timing"]["total"]["cpu"]["data"] / steps for r in rs]
    rows = {metric: compare(uniform, runs, metric) for metric in (ZERO_SHOT, RETRIEVAL)}
    results = {
        "metrics": [ZERO_SHOT, RETRIEVAL],
        "reference": {
            "steps": args.ref_steps,
            "final": reference["final"],
            "total_flops": run_cost(reference, "flops"),
        },  # fmt: skip
        "uniform": [
            {
                "steps": r["steps"],
                "seed": r["seed"],
                "final": r["final"],
                "total_flops": run_cost(r, "flops"),
                "train_seconds": r["train_seconds"],
                "wrong_captions": r["wrong_captions"],
            }
            for r in uniform
        ],  # fmt: skip
        "policies": {
            name: {
                **rows[ZERO_SHOT][name],
                "wrong_captions": runs[name]["wrong_captions"],
                "seeds": spread[name],
                "data_cpu_per_step": data_cpu[name],
                "speedup_retrieval": {
                    c: rows[RETRIEVAL][name][f"speedup_{c}"] for c in ("steps", "flops")
                },
            }
            for name in runs
        },  # fmt: skip
        "args": vars(args),
        "wall_seconds": time.perf_counter() - t0,
    }
    text = table(results)
    print(text)
    for folder, name in ((out, "results"), (RESULTS, "own_data")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(results, indent=2))
        (folder / f"{name}.txt").write_text(text + "\n")
        plot(
            uniform,
            runs,
            folder / f"{name}.png",
            metric=ZERO_SHOT,
            ylabel="held-out zero-shot top-1 (shapes)",
            title="Own shards (40 % wrong captions), tiny open_clip SigLIP: uniform's frontier",
        )
    print(
        f"\nwrote {out}/results.{{json,txt,png}} and {RESULTS}/own_data.{{json,txt,png}} "
        f"({results['wall_seconds']:.0f} s this time)"
    )


def mean_run(rs: list[dict]) -> dict:
    """One result of a run's seeds: the means of its final metrics, FLOPs, seconds, wrong-
    caption share and of each evaluation of its history (the seeds evaluate at the same steps):
    speed-ups are read for the mean, off the seed-mean frontier."""
    return {
        "steps": rs[0]["steps"],
        "final": {k: statistics.fmean(r["final"][k] for r in rs) for k in rs[0]["final"]},
        "flops": {k: statistics.fmean(r["flops"][k] for r in rs) for k in rs[0]["flops"]},
        "train_seconds": statistics.fmean(r["train_seconds"] for r in rs),
        "wrong_captions": statistics.fmean(r["wrong_captions"] for r in rs),
        "history": [
            {k: statistics.fmean(h[k] for h in evals) for k in evals[0]}
            for evals in zip(*(r["history"] for r in rs), strict=True)
        ],  # fmt: skip
    }


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f}" + (f"±{statistics.stdev(values):.3f}" if len(values) > 1 else "")


def table(results: dict) -> str:
    ref = results["reference"]
    n = len(results["args"]["seeds"].split(","))
    lines = [f"reference: {ref['steps']} uniform steps on {results['args']['curated']:,} curated "
             f"samples: zero-shot top-1 "
             f"{ref['final'][ZERO_SHOT]:.4f}, mean_recall@1 {ref['final'][RETRIEVAL]:.4f}",
             f"every learner run: mean ± standard deviation over {n} seeds",
             "", f"{'run':<28} {'steps':>5} {'top-1':>12} {'top-5':>6} {'R@1':>12} "
             f"{'TFLOPs':>7} {'score%':>6} {'seconds':>7} {'wrong':>6} | {'× steps':>8} "
             f"{'× FLOPs':>8} | {'R@1 × steps':>11} {'R@1 × FLOPs':>11}"]  # fmt: skip
    lines.append("-" * len(lines[-1]))

    def row(name, rs, speed=None):
        mean = statistics.fmean
        text = (f"{name:<28} {rs[0]['steps']:>5} "
                f"{_spread([r['final'][ZERO_SHOT] for r in rs]):>12} "
                f"{mean(r['final']['shapes/acc5'] for r in rs):>6.3f} "
                f"{_spread([r['final'][RETRIEVAL] for r in rs]):>12} "
                f"{mean(r['total_flops'] for r in rs) / 1e12:>7.3f} "
                f"{100 * (speed or {}).get('scoring_flops_share', 0.0):>5.1f}% "
                f"{mean(r['train_seconds'] for r in rs):>7.0f} "
                f"{mean(r['wrong_captions'] for r in rs):>6.3f}")  # fmt: skip
        if speed:
            sr = speed["speedup_retrieval"]
            text += (f" | {_x(speed['speedup_steps']):>8} {_x(speed['speedup_flops']):>8} | "
                     f"{_x(sr['steps']):>11} {_x(sr['flops']):>11}")  # fmt: skip
        return text

    by_steps: dict[int, list[dict]] = {}
    for r in results["uniform"]:
        by_steps.setdefault(r["steps"], []).append(r)
    for steps, rs in sorted(by_steps.items()):
        lines.append(row(f"uniform-{steps}", rs))
    for name, r in results["policies"].items():
        seeds = [{**r, "final": f} for f in r["seeds"]]
        lines.append(row(name, seeds, r))
    lines.append(f"top-1 / top-5: held-out zero-shot ({len(CLASSES)} classes, {len(TEMPLATES)} "
                 f"templates, {ZERO_SHOT_IMAGES:,} images); R@1: retrieval mean_recall@1 "
                 f"({RETRIEVAL_IMAGES} images, one different caption each); score%: learner "
                 "scoring's share of the run's FLOPs; wrong: share of trained pairs with a wrong "
                 "caption;\n× = uniform's steps (FLOPs, scoring included) to reach the run's "
                 "seed-mean final metric on its seed-mean frontier over the run's own ('> k×': "
                 "uniform's largest budget never got there, '< k×': its smallest already "
                 "did)")  # fmt: skip
    lines += ["", *paired(results), *drafting(results)]
    return "\n".join(lines)


def drafting(results: dict) -> list[str]:
    """Each drafted run against the same run undrafted (the same steps and seeds): the final
    top-1 and R@1 differences per seed, and the data phase's CPU seconds per step of both."""
    policies = results["policies"]
    lines = []
    for name, r in policies.items():
        plain = name.replace("flexi-draft-", "flexi-", 1)
        if plain == name or plain not in policies:
            continue
        if not lines:
            lines = ["", "drafted against the same run undrafted (same steps and seeds; per seed, "
                     "mean ± standard deviation):"]  # fmt: skip
        text = f"  {name:<34}" + _differences(r["seeds"], policies[plain]["seeds"])
        ours, theirs = r.get("data_cpu_per_step"), policies[plain].get("data_cpu_per_step")
        if ours and theirs:
            text += f" | data CPU s/step {_spread(ours)} against {_spread(theirs)}"
        lines.append(text)
    return lines


def paired(results: dict) -> list[str]:
    """Each selecting run against uniform at the same steps and seed (the same initial weights):
    per seed, the run's final top-1 and R@1 minus uniform's, and their mean ± standard deviation.
    The seeds share most of what makes a run early or late, so the paired differences can be
    tighter than either method's own spread."""
    seeds = [int(s) for s in results["args"]["seeds"].split(",")]
    uniform = {(r["steps"], r["seed"]): r["final"] for r in results["uniform"]}
    lines = ["paired with uniform at the same steps and seed (run - uniform, per seed; mean ± "
             "standard deviation):"]  # fmt: skip
    for name, r in results["policies"].items():
        if any((r["steps"], s) not in uniform for s in seeds):
            continue
        baseline = [uniform[r["steps"], s] for s in seeds]
        lines.append(f"  {name:<28}" + _differences(r["seeds"], baseline))
    return lines


def _differences(finals: list[dict], baseline: list[dict]) -> str:
    """' top-1 D D D = MEAN±STD R@1 ...': the final top-1 and R@1 of `finals` minus those of
    `baseline`, seed by seed (the lists in seed order), with their mean ± standard deviation."""
    text = ""
    for metric, label in ((ZERO_SHOT, "top-1"), (RETRIEVAL, "R@1")):
        diffs = [f[metric] - b[metric] for f, b in zip(finals, baseline, strict=True)]
        mean, std = statistics.fmean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else 0
        text += f" {label} " + " ".join(f"{d:+.3f}" for d in diffs) + f" = {mean:+.3f}±{std:.3f}"
    return text


def _x(s: dict) -> str:
    prefix = "" if s["bound"] == "=" else s["bound"] + " "
    return f"{prefix}{s['value']:.2f}×"


if __name__ == "__main__":
    main()
