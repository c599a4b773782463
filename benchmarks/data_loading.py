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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
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
