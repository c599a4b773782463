"""How far clip_benchmark's figures move with its default mixed precision on a CPU, against
jestkit's float32 evaluation of the same model on the same set files.

clip_benchmark's CLI evaluates under `torch.autocast(device, enabled=amp)` with amp on unless
`--no_amp`; on a CPU that is bfloat16. This script writes a zero-shot set (12 classes, 3
templates) and a retrieval set (2 captions an image) in clip_benchmark's layout
(tests/shard_files.py), trains a tiny open_clip SigLIP model uniformly on shards of the same
kind for --steps steps with `jestkit train`, and evaluates it with jestkit's Evaluator and with
clip_benchmark 1.6.2's own functions (its zero-shot classifier and classification loop, its
retrieval `evaluate`) with amp on and off. Prints a table and writes
benchmarks/results/clip_benchmark_parity.{json,txt}.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from clip_benchmark.metrics import zeroshot_classification as cb_zs  # noqa: E402
from clip_benchmark.metrics import zeroshot_retrieval as cb_ret  # noqa: E402
from PIL import Image  # noqa: E402
from shard_files import TINY_SIG, write_eval_set, write_shards  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402

from jestkit.cli import main as jestkit  # noqa: E402
from jestkit.openclip.dual import open_clip_inputs, open_clip_reference_file  # noqa: E402
from jestkit.own.evaluate import EvalConfig, Evaluator, load_sets  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def clip_benchmark_figures(model, tokenize, transform, zs, ret, amp: bool) -> dict[str, float]:
    """clip_benchmark's figures for the two sets, its own functions, amp on or off."""

    def images(s):
        return [transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in s.images]

    loader = torch.utils.data.DataLoader(list(zip(images(zs), zs.labels, strict=True)),
                                         batch_size=64)  # fmt: skip
    weights = cb_zs.zero_shot_classifier(model, tokenize, zs.classnames, zs.templates, "cpu",
                                         amp=amp)  # fmt: skip
    logits, target = cb_zs.run_classification(model, weights, loader, "cpu", amp=amp)
    pred = logits.float().argmax(1)
    out = {f"{zs.name}/acc1": (pred == target).float().mean().item(),
           f"{zs.name}/mean_per_class_recall": balanced_accuracy_score(target, pred)}
    pairs = list(zip(images(ret), ret.captions, strict=True))
    loader = torch.utils.data.DataLoader(pairs, batch_size=64, collate_fn=lambda b: (
        torch.stack([x for x, _ in b]), [c for _, c in b]))  # fmt: skip
    theirs = cb_ret.evaluate(model, loader, tokenize, "cpu", amp=amp, recall_k_list=[1, 5])
    out.update({f"{ret.name}/{k}": float(v) for k, v in theirs.items()})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tiny-sig.json").write_text(json.dumps(TINY_SIG))
        pool = write_shards(root / "pool", shards=2, per_shard=400)
        zs = write_eval_set(root / "shapes", "zeroshot", shards=2, per_shard=120)
        ret = write_eval_set(root / "captions", "retrieval", per_shard=240, first=2 * 10**7)
        if jestkit(["train", "--shards.pattern", pool, "--open_clip", str(root / "tiny-sig.json"),
                    "--selection.policy", "uniform", "--training.batch_size", "64",
                    "--training.steps", str(args.steps), "--training.eval_every",
                    str(args.steps), "--out", str(root / "run"), "--quiet"]) != 0:
            raise SystemExit("jestkit train failed")
        spec = str(root / "tiny-sig.json")
        model = open_clip_reference_file(spec, root / "run" / "checkpoint.pt")
        transform, tokenize = open_clip_inputs(spec, model)
        sets = load_sets(EvalConfig(zeroshot=zs, retrieval=ret))
        ours = Evaluator(sets, transform, tokenize, batch_size=64)(model)
        fp32 = clip_benchmark_figures(model.model, tokenize, transform, *sets, amp=False)
        bf16 = clip_benchmark_figures(model.model, tokenize, transform, *sets, amp=True)
    rows = [{"metric": k, "jestkit": ours[k], "clip_benchmark --no_amp": fp32[k],
             "clip_benchmark (amp, bf16 on CPU)": bf16[k]} for k in fp32]  # fmt: skip
    lines = [f"{'metric':<38} {'jestkit':>8} {'no_amp':>8} {'amp':>8} {'amp - fp32':>10}"]
    for r in rows:
        a, b, c = r["jestkit"], r["clip_benchmark --no_amp"], r["clip_benchmark (amp, bf16 on CPU)"]
        lines.append(f"{r['metric']:<38} {a:8.4f} {b:8.4f} {c:8.4f} {c - b:+10.4f}")
    worst_amp = max(abs(r["clip_benchmark (amp, bf16 on CPU)"] - r["clip_benchmark --no_amp"])
                    for r in rows)  # fmt: skip
    worst_fp32 = max(abs(r["jestkit"] - r["clip_benchmark --no_amp"]) for r in rows)
    lines.append(f"largest |amp - no_amp|: {worst_amp:.4f}; largest |jestkit - no_amp|: "
                 f"{worst_fp32:.2e} (tiny open_clip SigLIP, {args.steps} uniform steps)")
    text = "\n".join(lines)
    print(text)
    result = {"steps": args.steps, "rows": rows, "largest_amp_shift": worst_amp,
              "largest_jestkit_shift": worst_fp32}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "clip_benchmark_parity.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "clip_benchmark_parity.txt").write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
