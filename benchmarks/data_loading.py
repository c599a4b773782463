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
   (--shards.draft_side, jestkit.data.draft), measured through `jestkit train` itself
   (jestkit.own.train with 0 workers, so that every decode runs in the training process):
   the data phase's process CPU seconds (the parallel reader's draw: decode, transform,
   tokenize; with drafting also the selected ones' full decode) per trained example, steps 2 to
   6, for uniform (b = 32), JEST today (hard_learner joint, f = 0.8: B = 160) and JEST with
   --shards.draft_side auto, each at scoring patch 32 (draft side 112) and 56 (64), and
   with --shards.draft_side 224 at patch 32 (drafted no finer than the transform's 224), on 800
   photo-like JPEGs of 224 and of 512 px, with a one-layer open_clip SigLIP at ViT-B/16's input
   (224 px, patch 16; its transform is ViT-B/16's eval transform); the runs of a repeat
   interleaved, their order rotated every repeat, ratios to the same repeat's uniform. Then how
   far the drafted view is from today's: a ViT-B/16 (open_clip, random weights: none can be
   downloaded here) scoring 100 512-px JPEGs at patch 32 and 56 through
   jestkit.openclip.views, and the tiny SigLIP of tests/shard_files.py (32 px, patch 8) trained
   300 uniform steps on 64-px JPEG shapes scoring 500 held-out ones at patch 16 and 32: cosine
   of the image embeddings, and the overlap of the b selected by hard_learner (joint sigmoid,
   f = 0.8, the same noise) from each view's embeddings; for the trained model also the view
   fed at its own resolution (the drafted image transformed to 32 x 8 / patch px and encoded
   at patch 8, which jestkit does not do). Results: benchmarks/results/data_loading_draft.
   {json,txt}.

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


DRAFT_PATCHES = {"patch 32 (side 112)": 32, "patch 56 (side 64)": 56}
# --shards.draft_side 224: drafted no finer than the transform's output (never upsampled back)
DRAFT_VIEWS = {**{k: (p, "auto") for k, p in DRAFT_PATCHES.items()},
               "patch 32 (side 224)": (32, 224)}  # fmt: skip
DRAFT_B, DRAFT_STEPS, DRAFT_PER_SHARD = 32, 6, 100  # b = 32, B = 160 at f = 0.8


def write_photo_shards(folder: Path, px: int, n: int) -> str:
    """n photo-like JPEGs of px x px (benchmarks/jpeg_decode.py) with captions, 100 a shard."""
    from jpeg_decode import make_jpegs

    folder.mkdir(parents=True, exist_ok=True)
    jpegs = make_jpegs(n, px)
    shards = -(-n // DRAFT_PER_SHARD)
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:04d}.tar", "w") as tar:
            for n_ in range(s * DRAFT_PER_SHARD, min(n, (s + 1) * DRAFT_PER_SHARD)):
                files = {"jpg": jpegs[n_], "txt": f"a photo number {n_} of shapes".encode(),
                         "json": json.dumps({"uid": f"{n_:032x}"}).encode()}  # fmt: skip
                add_sample(tar, f"{n_:08d}", files)
    return str(folder / f"shard-{{0000..{shards - 1:04d}}}.tar")


# a one-layer open_clip SigLIP at ViT-B/16's input (224 px, patch 16): its transform is
# ViT-B/16's eval transform, its towers cost little next to the decode
B16_INPUT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 16,
                   "head_width": 32},  # fmt: skip
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    "init_logit_scale": 2.302585,
    "init_logit_bias": -10.0,
}


def train_path_data_cpu(pattern: str, spec: Path, out: Path, policy: str, patch: int | None,
                        draft: str) -> float:  # fmt: skip
    """`jestkit train`'s data phase (jestkit.own.train: the parallel reader's draw, and with
    drafting the selected ones' full decode) in process CPU seconds per trained example, steps
    2 to DRAFT_STEPS, 0 workers (all of it in this process: process_time counts it)."""
    from jestkit import SelectionConfig
    from jestkit.data.stream import ShardsConfig
    from jestkit.engine.config import ScoringConfig, TrainConfig, TrainingConfig
    from jestkit.models.factory import ModelConfig
    from jestkit.own.run import OwnModel, OwnRun
    from jestkit.own.train import train_own

    run = OwnRun(ShardsConfig(pattern=pattern, buffer_size=100, draft_side=draft),
                 OwnModel(open_clip=str(spec)))  # fmt: skip
    config = TrainConfig(
        selection=SelectionConfig(policy=policy, method="joint", filter_ratio=0.8, n_chunks=4),
        scoring=ScoringConfig(patch_size=patch),
        training=TrainingConfig(batch_size=DRAFT_B, steps=DRAFT_STEPS, eval_every=DRAFT_STEPS,
                                checkpoint_every=DRAFT_STEPS),  # fmt: skip
    )
    result = train_own(run, ModelConfig(), config, out, progress=False)
    data = result["timing"]["per_step"]["cpu"]["data"][1:]
    return sum(data) / len(data) / DRAFT_B


def draft_costs(repeats: int, tmp: Path) -> dict:
    """Data CPU per trained example through `jestkit train` (train_path_data_cpu): uniform,
    JEST today and JEST with drafted candidates, side by side, repeats interleaved."""
    import torch

    torch.set_num_threads(1)
    spec = tmp / "b16-input.json"
    spec.write_text(json.dumps(B16_INPUT))
    modes = {"uniform": ("uniform", None, "none"),
             **{f"JEST today, {name}": ("hard_learner", p, "none")
                for name, p in DRAFT_PATCHES.items()},
             **{f"JEST draft, {name}": ("hard_learner", p, side)
                for name, (p, side) in DRAFT_VIEWS.items()}}  # fmt: skip
    out = {}
    for px in (224, 512):
        pattern = write_photo_shards(tmp / f"photos-{px}", px, 5 * DRAFT_B * DRAFT_STEPS)
        times, loads = {m: [] for m in modes}, []
        for r in range(repeats):  # interleaved, the order rotated every repeat
            loads.append(os.getloadavg()[0])
            order = list(modes)[r % len(modes) :] + list(modes)[: r % len(modes)]
            for m in order:
                times[m].append(train_path_data_cpu(pattern, spec, tmp / f"run-{px}-{r}-{m}",
                                                     *modes[m]))  # fmt: skip
        out[f"{px}px"] = {
            "ms_per_trained_example": {m: spread([1e3 * t for t in v]) for m, v in times.items()},
            "vs_uniform": {m: spread([t / u for t, u in zip(v, times["uniform"], strict=True)])
                           for m, v in times.items()},  # fmt: skip
            "load_average": loads,
        }
    return out


def _overlap(image_a, image_b, text, scale: float, bias: float, filter_ratio: float,
             seed: int) -> float:  # fmt: skip
    """The share of the b that hard_learner (joint sigmoid, the same noise) selects from the
    embeddings image_a that it also selects from image_b."""
    import torch

    import jestkit

    picks = []
    for image in (image_a, image_b):
        learner = jestkit.Embeddings(image, text, scale, bias)
        picks.append(set(jestkit.select(
            learner, None, policy="hard_learner", loss="sigmoid", filter_ratio=filter_ratio,
            generator=torch.Generator().manual_seed(seed)).tolist()))  # fmt: skip
    return len(picks[0] & picks[1]) / len(picks[0])


def view_distance(n: int = 100, filter_ratio: float = 0.8, seed: int = 0) -> dict:
    """Today's coarse scoring view of a ViT-B/16 against the drafted one: embedding cosine and
    the overlap of the selections they give (random weights; see the module docstring)."""
    import open_clip
    import torch
    import torch.nn.functional as F
    from jpeg_decode import make_jpegs

    from jestkit.data.draft import decode_image, draft_side
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
        for name, (patch, side) in DRAFT_VIEWS.items():
            side = draft_side(224, 16, patch) if side == "auto" else side
            emb = {}
            for view, s in (("today", None), ("draft", side)):
                images = torch.stack([decode_image(d, "RGB", transform, s) for d in jpegs])
                emb[view] = F.normalize(views.encode_image(images, patch_size=patch), dim=-1)
            cos = (emb["draft"] * emb["today"]).sum(-1)
            out[name] = {"cosine_median": float(cos.median()), "cosine_min": float(cos.min()),
                         "selection_overlap": _overlap(emb["today"], emb["draft"], text, 10.0,
                                                       -10.0, filter_ratio, seed)}  # fmt: skip
    return out


def write_shape_jpegs(folder: Path, n: int, first: int, size: int = 64) -> str:
    """tests/shard_files.py's shapes (noisy captions) at `size` px as JPEGs (quality 90), as the
    own-data benchmark stores its pool for a 32-px model; one shard."""
    import io

    import numpy as np
    from PIL import Image
    from shard_files import sample

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(first)
    with tarfile.open(folder / "shard-0000.tar", "w") as tar:
        for i in range(first, first + n):
            png, caption = sample(i, rng, size, noisy=True)
            jpg = io.BytesIO()
            Image.open(io.BytesIO(png)).save(jpg, "JPEG", quality=90)
            files = {"jpg": jpg.getvalue(), "txt": caption.encode(),
                     "json": json.dumps({"uid": f"{i:032x}"}).encode()}  # fmt: skip
            add_sample(tar, f"{i:08d}", files)
    return str(folder / "shard-0000.tar")


def trained_view_distance(tmp: Path, steps: int = 300, n: int = 500, filter_ratio: float = 0.8,
                          seed: int = 0) -> dict:  # fmt: skip
    """The same comparison with a trained model: the tiny open_clip SigLIP (tests/shard_files.py:
    32 px, patch 8) trained `steps` uniform steps (b = 32) on 2,000 64-px JPEG shapes, then
    scoring n held-out ones at patch 16 (draft side 16: libjpeg's 1/4 scale) and 32 (side 8:
    1/8) with today's view and the drafted one."""
    import open_clip
    import torch
    import torch.nn.functional as F
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from shard_files import TINY_SIG

    from jestkit import SelectionConfig
    from jestkit.data.draft import decode_image, draft_side
    from jestkit.data.shards import ShardPool, ShardPoolConfig
    from jestkit.data.stream import ShardsConfig
    from jestkit.engine.config import TrainConfig, TrainingConfig
    from jestkit.models.factory import ModelConfig
    from jestkit.models.view import View
    from jestkit.openclip.dual import open_clip_inputs, open_clip_model
    from jestkit.own.run import OwnModel, OwnRun
    from jestkit.own.train import train_own

    spec = tmp / "tiny-sig.json"
    spec.write_text(json.dumps(TINY_SIG))
    pattern = write_shape_jpegs(tmp / "shapes-train", 2000, 0)
    run = OwnRun(ShardsConfig(pattern=pattern, buffer_size=500), OwnModel(open_clip=str(spec)))
    config = TrainConfig(selection=SelectionConfig(policy="uniform"),
                         training=TrainingConfig(batch_size=32, steps=steps, eval_every=steps,
                                                 checkpoint_every=steps, lr=2e-3))  # fmt: skip
    result = train_own(run, ModelConfig(), config, tmp / "tiny-trained", progress=False)
    model = open_clip_model(str(spec), str(tmp / "tiny-trained" / "checkpoint.pt"), frozen=True)
    transform, tokenize = open_clip_inputs(str(spec), model)
    held = ShardPool(write_shape_jpegs(tmp / "shapes-held", n, 10**6),
                     ShardPoolConfig(buffer_size=0, rank=0, world_size=1, mode=None))
    records = list(held.records(0))
    tokens = tokenize([r.caption for r in records])
    out = {"train_steps": steps, "final_train_loss": result["losses"][-1]}
    cfg = open_clip.get_model_preprocess_cfg(model.model)
    visual = model.model.visual
    with torch.no_grad():
        for patch in (16, 32):
            side = draft_side(32, 8, patch)
            # the scoring view fed at its own resolution (not built: docs/flexi.md): the drafted
            # image through the same transform at 32 x 8 / patch px, at the model's patch 8
            small = image_transform_v2(PreprocessCfg(**{**cfg, "size": (side, side)}),
                                       is_train=False)  # fmt: skip
            emb = {}
            for view, s in (("today", None), ("draft", side)):
                images = torch.stack([decode_image(r.image, "RGB", transform, s) for r in records])
                emb[view] = model.embeddings(images, tokens, View(patch_size=patch)).image
            images = torch.stack([decode_image(r.image, "RGB", small, side) for r in records])
            emb["own resolution"] = F.normalize(model.views.vision_forward(visual, images), dim=-1)
            text = F.normalize(model.encode_text(tokens), dim=-1)
            for view in ("draft", "own resolution"):
                cos = (emb[view] * emb["today"]).sum(-1)
                name = f"patch {patch} (side {side})" + ("" if view == "draft" else ", " + view)
                out[name] = {
                    "cosine_median": float(cos.median()), "cosine_min": float(cos.min()),
                    "selection_overlap": _overlap(emb["today"], emb[view], text,
                                                  float(model.logit_scale),
                                                  float(model.logit_bias), filter_ratio, seed),
                }  # fmt: skip
    return out


def draft_text(result: dict) -> str:
    """data_loading_draft.txt from its JSON."""
    costs, trained = result["costs"], result["trained_view_distance"]
    names = list(costs["224px"]["vs_uniform"])
    lines = [f"`jestkit train`'s data-phase CPU (decode, transform, tokenize; 0 workers) per "
             f"trained example at f = 0.8 (b = {DRAFT_B}, B = {5 * DRAFT_B}), relative to "
             f"uniform's; photo-like JPEGs, ViT-B/16's 224 eval transform (a 1-layer open_clip "
             f"SigLIP at 224 px, patch 16), 1 thread, steps 2-{DRAFT_STEPS}; median (min-max) of "
             f"{result['repeats']} interleaved repeats; load average at start "
             f"{result['load_average_start'][0]:.1f}", "",
             f"{'JPEGs':6s} {'run':36s} {'ms / trained example':>22s} {'vs uniform':>20s} "
             f"{'load':>5s}"]  # fmt: skip
    for px, c in costs.items():
        for m in names:
            t, v = c["ms_per_trained_example"][m], c["vs_uniform"][m]
            cell = f"{t['median']:.2f} ({t['min']:.2f}-{t['max']:.2f})"
            ratio = f"{v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f})"
            lines.append(f"{px:6s} {m:36s} {cell:>22s} {ratio:>20s} "
                         f"{statistics.median(c['load_average']):5.1f}")  # fmt: skip
    head = f"{'view':36s} {'cosine median':>13s} {'cosine min':>10s} {'overlap of b selected':>22s}"
    lines += ["", "today's coarse view of a ViT-B/16 (random weights) vs the drafted one, "
              "100 512-px JPEGs:", head]  # fmt: skip
    for name, v in result["view_distance"].items():
        lines.append(f"{name:36s} {v['cosine_median']:13.4f} {v['cosine_min']:10.4f} "
                     f"{v['selection_overlap']:22.3f}")  # fmt: skip
    lines += ["", f"the same with the tiny SigLIP (32 px, patch 8) trained {trained['train_steps']}"
              f" uniform steps on 64-px JPEG shapes (last loss {trained['final_train_loss']:.3f}),"
              f" 500 held-out 64-px JPEGs:", head]  # fmt: skip
    for name, v in trained.items():
        if isinstance(v, dict):
            lines.append(f"{name:36s} {v['cosine_median']:13.4f} {v['cosine_min']:10.4f} "
                         f"{v['selection_overlap']:22.3f}")  # fmt: skip
    return "\n".join(lines)


def draft_main(repeats: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="jestkit-data-loading-draft-"))
    load = os.getloadavg()
    costs = draft_costs(repeats, tmp)
    distance = view_distance()
    trained = trained_view_distance(tmp)
    result = {"costs": costs, "view_distance": distance, "trained_view_distance": trained,
              "repeats": repeats, "load_average_start": load,
              "load_average_end": os.getloadavg()}  # fmt: skip
    text = draft_text(result)
    RESULTS.mkdir(exist_ok=True)
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
