"""Reading your own shards in parallel: samples/s against DataLoader workers and ranks, what each
rank reads, and the data wait of a training step (jestkit.data.parallel).

Writes 1,600 photo-like 224-px JPEGs (quality 90, as benchmarks/jpeg_decode.py makes them) with
captions into 16 tar shards (img2dataset's layout), then:

1. throughput: W = 1, 2 ranks (processes, started together) x K = 0, 1, 2 workers each, 4
   streams: every rank draws its B / W of each super-batch (B = 160) through open_clip's
   ViT-B/32 eval transform (resize 224, center crop, normalise) and tokenizer, one epoch after
   a warm-up draw; samples/s = the job's samples over the slowest rank's seconds. "before" is
   the previous path (jestkit.data.stream.StreamSource on every rank: each rank reads and
   decodes the whole super-batch);
2. reads per rank: the share of an epoch's samples each rank decoded (1 / W; 1 before);
3. data wait: `jestkit train`'s loop (jestkit.own.train) with the tiny open_clip SigLIP learner
   (tests/shard_files.py: 32-px images, two layers per tower; hard_learner, joint, b = 32,
   f = 0.8) on the same shards, 0, 1, 2 workers: the share of step time spent waiting in draw
   (result.json's data_wait_share), over steps 3 to 12;
4. what a GPU node needs: at b = 4,096, f = 0.8 a step draws B = 20,480 samples; the
   throughput of one worker gives the seconds of one worker's decoding per step, so the number
   of workers a node needs for a given step time.

5. with --draft (only this part runs): decoding candidates no finer than they are scored
   (jestkit.data.draft). Per trained example at filter ratio f, in CPU seconds on one thread:
   uniform decodes 1 image in full, JEST today 1 / (1 - f), JEST with draft_side 1 / (1 - f)
   drafted candidates plus the selected one again in full. Photo-like JPEGs of 224 and 512 px,
   the ViT-B/16 eval transform (224), scoring views at patch 32 (draft side 112) and 64 (56, an
   image size of 224 at a 4x coarser patch); decode alone and decode + transform, interleaved
   repeats. Then how far the drafted view is from today's: a ViT-B/16 (open_clip, random
   weights: none can be downloaded here) scoring both at patch 32 through
   jestkit.openclip.views: cosine of the image embeddings, and the overlap of the b selected by
   hard_learner (joint sigmoid, f = 0.8, the same noise) from each view's embeddings.
   Results: benchmarks/results/data_loading_draft.{json,txt}.

Each measurement is repeated (--repeats 3) and reported as the median and the range, with the
machine's 1-minute load average when it started (`load`: on a shared 2-core machine other jobs
take cores from the workers, and throughput with more processes than free cores does not grow).
Run it under `nice -n 19` there; results go to benchmarks/results/data_loading.{json,txt}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from shard_files import add_sample  # noqa: E402  (the tests' WebDataset sample writer)

RESULTS = ROOT / "benchmarks" / "results"
N_SHARDS, PER_SHARD, B, STREAMS = 16, 100, 160, 4
GPU_B = 20480  # b = 4,096 at filter ratio 0.8


def write_jpeg_shards(folder: Path) -> str:
    from jpeg_decode import make_jpegs

    folder.mkdir(parents=True, exist_ok=True)
    jpegs = make_jpegs(N_SHARDS * PER_SHARD, 224)
    for s in range(N_SHARDS):
        with tarfile.open(folder / f"shard-{s:04d}.tar", "w") as tar:
            for i in range(PER_SHARD):
                n = s * PER_SHARD + i
                files = {"jpg": jpegs[n], "txt": f"a photo number {n} of shapes".encode(),
                         "json": json.dumps({"uid": f"{n:032x}"}).encode()}  # fmt: skip
                add_sample(tar, f"{n:08d}", files)
    return str(folder / f"shard-{{0000..{N_SHARDS - 1:04d}}}.tar")


def vit_b32_inputs():
    """open_clip's ViT-B/32 eval transform (no weights needed) and tokenizer."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    transform = image_transform_v2(PreprocessCfg(size=(224, 224)), is_train=False)
    return transform, open_clip.get_tokenizer("ViT-B-32")


def _rank(pattern, rank, world_size, workers, before, barrier, queue):
    import torch

    from jestkit.data.stream import ShardsConfig, StreamSource

    multiprocessing.set_start_method("fork", force=True)  # as under torchrun
    torch.set_num_threads(1)
    transform, tokenize = vit_b32_inputs()
    config = ShardsConfig(pattern=pattern, buffer_size=100, streams=STREAMS, workers=workers)
    if before:
        source = StreamSource(config.pool(transform), tokenize)
    else:
        source = config.parallel(transform, tokenize, rank, world_size)
    size = B
    source.draw(size)  # warm-up: workers start, the first chunks decode
    barrier.wait()
    start = time.perf_counter()
    samples, ids = 0, set()
    for _ in range(N_SHARDS * PER_SHARD // B):  # one epoch of super-batches
        drawn = source.draw(size)
        samples += len(drawn)
        if before:
            ids.update(drawn.ids)
        else:
            for chunk in source.last_chunks:
                ids.update(i for i, e in zip(chunk["ids"], chunk["epochs"].tolist(),
                                             strict=True) if e == 0)  # fmt: skip
    seconds = time.perf_counter() - start
    if hasattr(source, "close"):
        source.close()
    queue.put((rank, samples, seconds, len(ids)))


def throughput(pattern: str, world_size: int, workers: int, before: bool = False) -> dict:
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(world_size), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(pattern, r, world_size, workers, before, barrier,
                                             queue)) for r in range(world_size)]  # fmt: skip
    for p in procs:
        p.start()
    got = [queue.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    samples = sum(g[1] for g in got)
    seconds = max(g[2] for g in got)
    useful = samples / world_size if before else samples  # before: every rank drew all of B
    reads = [g[3] / (N_SHARDS * PER_SHARD) for g in sorted(got)]
    return {"samples_per_s": useful / seconds, "reads_per_rank": reads}


def data_wait(pattern: str, workers: int, out: Path) -> float:
    """The tiny open_clip learner's share of step time waiting for data, steps 3-12."""
    from shard_files import TINY_SIG

    from jestkit import SelectionConfig
    from jestkit.data.stream import ShardsConfig
    from jestkit.engine.config import TrainConfig, TrainingConfig
    from jestkit.models.factory import ModelConfig
    from jestkit.own.run import OwnModel, OwnRun
    from jestkit.own.train import train_own

    out.mkdir(parents=True, exist_ok=True)
    spec = out / "tiny-sig.json"
    spec.write_text(json.dumps(TINY_SIG))
    run = OwnRun(ShardsConfig(pattern=pattern, buffer_size=100, workers=workers),
                 OwnModel(open_clip=str(spec)))  # fmt: skip
    config = TrainConfig(
        selection=SelectionConfig(policy="hard_learner", method="joint", filter_ratio=0.8),
        training=TrainingConfig(batch_size=32, steps=12, eval_every=12, checkpoint_every=12),
    )
    result = train_own(run, ModelConfig(), config, out / f"run-{workers}",
                       progress=False)  # fmt: skip
    waits, steps = result["data_wait"][2:], result["step_seconds"][2:]
    return sum(waits) / sum(steps)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


DRAFT_SIDES = {"patch 32 (side 112)": 112, "patch 64 (side 56)": 56}


def _decode_seconds(jpegs: list[bytes], transform, side: int | None) -> float:
    """Process CPU seconds per image to decode (and transform) every image once."""
    from jestkit.data.draft import decode_image

    start = time.process_time()
    for data in jpegs:
        decode_image(data, "RGB", transform, side)
    return (time.process_time() - start) / len(jpegs)


def draft_costs(repeats: int, filter_ratio: float = 0.8, n: int = 100) -> dict:
    """Decode CPU per trained example: uniform, JEST today, JEST with drafted candidates."""
    import torch
    from jpeg_decode import make_jpegs

    torch.set_num_threads(1)
    transform, _ = vit_b32_inputs()  # open_clip's 224 eval transform (the same for B/16)
    per_b = 1 / (1 - filter_ratio)
    out = {}
    for px in (224, 512):
        jpegs = make_jpegs(n, px)
        for stage, tf in (("decode", None), ("decode + transform", transform)):
            modes = {"full": None, **DRAFT_SIDES}
            times = {m: [] for m in modes}
            for r in range(repeats):  # interleaved, the order rotated every repeat
                order = list(modes)[r % len(modes) :] + list(modes)[: r % len(modes)]
                for m in order:
                    times[m].append(_decode_seconds(jpegs, tf, modes[m]))
            for m in DRAFT_SIDES:
                # per repeat: uniform = full; today = per_b * full; draft = per_b * drafted + full
                today = [per_b for _ in times["full"]]
                drafted = [per_b * d / f + 1 for d, f in zip(times[m], times["full"], strict=True)]
                out[f"{px}px / {stage} / {m}"] = {
                    "full_ms": spread([1e3 * t for t in times["full"]]),
                    "drafted_ms": spread([1e3 * t for t in times[m]]),
                    "jest_today_vs_uniform": spread(today),
                    "jest_draft_vs_uniform": spread(drafted),
                }
    return out


def view_distance(n: int = 100, filter_ratio: float = 0.8, seed: int = 0) -> dict:
    """Today's patch-32 scoring view of a ViT-B/16 against the drafted one: embedding cosine and
    the overlap of the selections they give (random weights; see the module docstring)."""
    import open_clip
    import torch
    import torch.nn.functional as F
    from jpeg_decode import make_jpegs

    import jestkit
    from jestkit.data.draft import decode_image
    from jestkit.openclip.views import OpenClipViews

    torch.manual_seed(seed)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    transform, _ = vit_b32_inputs()
    views = OpenClipViews(model, "ViT-B-16")
    tokens = open_clip.get_tokenizer("ViT-B-16")([f"a photo number {i}" for i in range(n)])
    jpegs = make_jpegs(n, 512)
    out = {}
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokens), dim=-1)
        emb = {}
        for name, side in (("today", None), *DRAFT_SIDES.items()):
            images = torch.stack([decode_image(d, "RGB", transform, side) for d in jpegs])
            emb[name] = F.normalize(views.encode_image(images, patch_size=32), dim=-1)
    for name in DRAFT_SIDES:
        cos = (emb[name] * emb["today"]).sum(-1)
        picks = []
        for e in (emb["today"], emb[name]):
            learner = jestkit.Embeddings(e, text, 10.0, -10.0)
            picks.append(set(jestkit.select(
                learner, None, policy="hard_learner", loss="sigmoid", filter_ratio=filter_ratio,
                generator=torch.Generator().manual_seed(seed)).tolist()))  # fmt: skip
        out[name] = {"cosine_median": float(cos.median()), "cosine_min": float(cos.min()),
                     "selection_overlap": len(picks[0] & picks[1]) / len(picks[0])}  # fmt: skip
    return out


def draft_main(repeats: int) -> None:
    load = os.getloadavg()
    costs = draft_costs(repeats)
    distance = view_distance()
    lines = [f"decode CPU per trained example at f = 0.8, relative to uniform's; 100 photo-like "
             f"JPEGs per size, ViT-B/16 224 eval transform, 1 thread; median (min-max) of "
             f"{repeats} interleaved repeats; load average at start {load[0]:.1f}", "",
             f"{'case':52s} {'full ms':>16s} {'drafted ms':>16s} {'JEST today':>10s} "
             f"{'JEST draft':>18s}"]  # fmt: skip
    for case, c in costs.items():
        f, d, j = c["full_ms"], c["drafted_ms"], c["jest_draft_vs_uniform"]
        lines.append(f"{case:52s} {f['median']:6.2f} ({f['min']:.2f}-{f['max']:.2f}) "
                     f"{d['median']:6.2f} ({d['min']:.2f}-{d['max']:.2f}) "
                     f"{c['jest_today_vs_uniform']['median']:9.1f}x "
                     f"{j['median']:5.2f}x ({j['min']:.2f}-{j['max']:.2f})")  # fmt: skip
    lines += ["", "today's patch-32 view of a ViT-B/16 (random weights) vs the drafted one, "
              "100 512-px JPEGs:", f"{'draft':20s} {'cosine median':>13s} {'cosine min':>10s} "
              f"{'overlap of b selected':>22s}"]  # fmt: skip
    for name, v in distance.items():
        lines.append(f"{name:20s} {v['cosine_median']:13.4f} {v['cosine_min']:10.4f} "
                     f"{v['selection_overlap']:22.3f}")  # fmt: skip
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    result = {"costs": costs, "view_distance": distance, "repeats": repeats,
              "load_average_start": load, "load_average_end": os.getloadavg()}  # fmt: skip
    (RESULTS / "data_loading_draft.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "data_loading_draft.txt").write_text(text + "\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--draft", action="store_true", help="only part 5 (drafted decoding)")
    args = parser.parse_args()
    if args.draft:
        return draft_main(args.repeats)
    tmp = Path(tempfile.mkdtemp(prefix="jestkit-data-loading-"))
    pattern = write_jpeg_shards(tmp / "shards")
    cases = [(1, 0, False), (1, 1, False), (1, 2, False), (2, 0, False), (2, 1, False),
             (2, 2, False), (2, 0, True)]  # fmt: skip
    rows = {case: {"rates": [], "reads": None, "load": []} for case in cases}
    waits = {k: [] for k in (0, 1, 2)}
    for _ in range(args.repeats):  # each repeat measures every case: load falls on all alike
        for case in cases:
            rows[case]["load"].append(os.getloadavg()[0])
            got = throughput(pattern, *case)
            rows[case]["rates"].append(got["samples_per_s"])
            rows[case]["reads"] = got["reads_per_rank"]
        for k in waits:
            waits[k].append(data_wait(pattern, k, tmp / f"wait-{len(waits[k])}"))
    one = statistics.median(rows[(1, 1, False)]["rates"])
    lines = [f"{N_SHARDS * PER_SHARD} 224-px JPEGs in {N_SHARDS} tar shards; B = {B}, "
             f"{STREAMS} streams; ViT-B/32 eval transform; median (min-max) of {args.repeats}",
             "", "reader   ranks workers  samples/s (min-max)    vs 1 worker  reads per rank  load",
             "-------- ----- -------  ---------------------  -----------  --------------  ----"]
    out = {"samples": N_SHARDS * PER_SHARD, "shards": N_SHARDS, "B": B, "streams": STREAMS,
           "repeats": args.repeats, "throughput": [], "data_wait_share": {}}  # fmt: skip
    for (W, K, before), row in rows.items():
        s = spread(row["rates"])
        reads = " ".join(f"{r:.2f}" for r in row["reads"])
        lines.append(f"{'before' if before else 'parallel':8s} {W:5d} {K:7d}  {s['median']:7.0f} "
                     f"({s['min']:.0f}-{s['max']:.0f}){'':6s} {s['median'] / one:9.2f}x  "
                     f"{reads:14s}  {statistics.median(row['load']):4.1f}")  # fmt: skip
        out["throughput"].append({"ranks": W, "workers": K, "before": before, **s,
                                  "reads_per_rank": row["reads"],
                                  "load_average": row["load"]})  # fmt: skip
    lines += ["", "data wait of the tiny open_clip learner (share of step time, steps 3-12)",
              "workers  share (min-max)"]  # fmt: skip
    for k, v in waits.items():
        s = spread(v)
        out["data_wait_share"][k] = s
        lines.append(f"{k:7d}  {s['median']:.1%} ({s['min']:.1%}-{s['max']:.1%})")
    seconds = GPU_B / one
    out["gpu_node"] = {"B": GPU_B, "one_worker_samples_per_s": one,
                       "one_worker_seconds_per_step": seconds}  # fmt: skip
    lines += ["", f"a GPU node at b = 4,096, f = 0.8 draws B = {GPU_B:,} samples per step; one "
              f"worker decodes {one:.0f}/s here, {seconds:.0f} s of one worker per step: a "
              f"step of T seconds needs {seconds:.0f} / T workers across the node (e.g. "
              f"{seconds / 1:.0f} at T = 1 s), at this machine's per-core speed"]  # fmt: skip
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data_loading.json").write_text(json.dumps(out, indent=2))
    (RESULTS / "data_loading.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
