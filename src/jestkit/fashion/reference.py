"""The reference model: trained on the small curated set only, then frozen and cached.

A reference folder holds:
    model.pt         the reference's weights and model config
    reference.json   its fingerprint, logit scale and bias, training FLOPs and test metrics
    cache/           its image and text embeddings of every pool example, keyed by id
                     (jestkit.dropin.cache: Parquet, fingerprinted, resumable, atomic)
Training reads reference.json and the cache, never the model: a stale cache (other weights or
other data) is refused by ReferenceCache.open.

A folder holding a finished reference is refused unless overwrite; a reference is built in
OUT.partial beside OUT (jestkit.engine.rundir) and swapped in whole once reference.json is
written, so OUT always holds one complete reference or none. A build killed part-way leaves
OUT.partial, and the next build with the same settings resumes its cache there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch

from jestkit.core import SelectionConfig
from jestkit.core.filter import keep_top, similarity
from jestkit.dropin.cache import (
    CacheMeta,
    ReferenceCache,
    build_cache,
    fingerprint_state_dict,
)
from jestkit.dropin.distributed import Distributed, broadcast_parameters, build_cache_sharded
from jestkit.engine.checkpoint import save_atomic
from jestkit.engine.config import TrainConfig, TrainingConfig, reference_training
from jestkit.engine.files import read_json_record, write_json_atomic
from jestkit.engine.flops import count_no_grad_flops
from jestkit.engine.loop import Trainer
from jestkit.engine.reference import REFERENCE_FIELDS, ReferenceOutputs, read_reference_info
from jestkit.engine.rundir import LOCK_NAME, check_reference_dir, partial_dir, run_lock, swap_in
from jestkit.fashion.prepare import CaptionData
from jestkit.fashion.source import pixels
from jestkit.models.factory import ModelConfig, build_model


def _cache_meta(model_fingerprint: str, data: CaptionData, embed_dim: int) -> CacheMeta:
    return CacheMeta(
        model_fingerprint, data.fingerprint, {"image": [embed_dim], "text": [embed_dim]}
    )


def train_reference(
    data: CaptionData,
    model_config: ModelConfig,
    config: TrainingConfig | None,
    loss: str,
    out_dir: str | os.PathLike,
    evaluate=None,
    progress: bool = True,
    dist: Distributed | None = None,
    overwrite: bool = False,
    write_config=None,
) -> dict:
    """Train the reference on data.curated (uniform batches; config: default
    reference_training()), save it and build its cache of the pool. Returns the contents of
    reference.json. dist: under torchrun, the ranks train it data-
    parallel and build the cache sharded (jestkit.dropin.distributed); rank 0 writes the files.
    A finished reference in out_dir is refused unless overwrite; the new one is built in
    OUT.partial and swapped in whole (jestkit.engine.rundir). write_config: called with the
    folder being built, once locked (the CLI writes config.yaml)."""
    dist = dist or Distributed()
    out = Path(out_dir)
    if len(data.curated) == 0:
        raise ValueError(
            "the curated set is empty (--data.curated_size 0): the reference trains on it; set "
            "--data.curated_size to the clean pairs to keep apart (e.g. 3000)"
        )
    check_reference_dir(out, overwrite)
    config = config or reference_training()
    partial = partial_dir(out)
    with run_lock(partial) if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            check_reference_dir(out, overwrite)  # again, under the lock
            if write_config is not None:
                write_config(partial)  # config.yaml, swapped in with the rest
        info = _build(data, model_config, config, loss, partial, evaluate, progress, dist)
        if dist.is_main:
            (partial / LOCK_NAME).unlink(missing_ok=True)
            swap_in(partial, out)
    return info


def _build(data, model_config, config, loss, out: Path, evaluate, progress, dist) -> dict:
    """Train the reference and build its folder at `out` (the partial folder)."""
    torch.manual_seed(config.seed)
    model = build_model(model_config, len(data.vocab), loss)
    batch_size = min(config.batch_size, len(data.curated))
    config = replace(config, batch_size=batch_size)  # recorded as it trains
    train_config = TrainConfig(
        selection=SelectionConfig(policy="uniform", loss=loss),
        training=config,
    )
    trainer = Trainer(
        model,
        train_config,
        data.curated_source(),
        progress=progress,
        desc="reference",
        evaluate=evaluate,
        dist=dist,
    )
    trainer.run()
    model.eval()
    if dist.world_size > 1:  # every rank caches with rank 0's weights, bit for bit
        broadcast_parameters(model, dist.group)
    model_fingerprint = fingerprint_state_dict(model.state_dict())
    if dist.is_main:
        save_atomic(
            {"model": model.state_dict(), "model_config": asdict(model_config), "loss": loss},
            out / "model.pt",
        )

    cache_flops = 0
    tokens_by_id = dict(zip(data.pool.ids.tolist(), range(len(data.pool)), strict=True))

    def compute(ids: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal cache_flops
        rows = torch.tensor([tokens_by_id[i] for i in ids.tolist()])
        images, tokens = pixels(data.pool.images[rows]), data.pool_tokens[rows]
        (img, txt), flops = count_no_grad_flops(model, images, tokens)
        cache_flops += flops
        return {"image": img, "text": txt}

    meta = _cache_meta(model_fingerprint, data, model_config.embed_dim)
    building = out / "building.json"  # what the cache parts in out/cache were computed with
    if dist.is_main:
        if building.exists() and read_json_record(building, "a reference's building.json",
                                                  fix=f"delete {out}") != meta.to_dict():
            shutil.rmtree(out / "cache", ignore_errors=True)  # a killed build of other settings
        write_json_atomic(meta.to_dict(), building)
    if dist.world_size > 1:
        torch.distributed.barrier(group=dist.group)  # building.json is settled
    if dist.world_size > 1:
        build_cache_sharded(
            out / "cache", data.pool.ids, compute, meta, group=dist.group, progress=progress
        )
    else:
        build_cache(out / "cache", data.pool.ids, compute, meta, batch_size=1024, progress=progress)
    if dist.world_size > 1:  # every rank's share of the cache's FLOPs
        total = torch.tensor([cache_flops], dtype=torch.float64)
        torch.distributed.all_reduce(total, group=dist.group)
        cache_flops = int(total.item())
    info = {
        "model_fingerprint": model_fingerprint,
        "data_fingerprint": data.fingerprint,
        "loss": loss,
        "logit_scale": model.logit_scale.item(),
        "logit_bias": model.logit_bias.item(),
        "model_config": asdict(model_config),
        "config": asdict(config),
        "train_flops": trainer.flops.total["train"],
        "cache_flops": cache_flops,
        "curated_size": len(data.curated),
        "final": trainer.summary()["final"],
        # its training's seconds (the cache's pass is not timed here: jestkit plan times it)
        "train_seconds": {c: t["run"] for c, t in trainer.clock.summary()["total"].items()},
    }
    if dist.is_main:
        building.unlink()
        write_json_atomic(info, out / "reference.json")
    return info


def load_reference(ref_dir: str | os.PathLike, data: CaptionData, loss: str) -> ReferenceOutputs:
    """The cached reference for `data`; refuses a missing, stale or mismatched one."""
    ref = Path(ref_dir)
    info = read_reference_info(ref, loss, f"`jestkit reference --out {ref}`")
    cache = ReferenceCache.open(ref / "cache", info["model_fingerprint"], data.fingerprint)
    return ReferenceOutputs(cache, info["logit_scale"], info["logit_bias"])


def filter_pool(
    data: CaptionData, ref_dir: str | os.PathLike, keep: float, loss: str
) -> CaptionData:
    """`data` with only the share `keep` of the pool that the reference scores highest by
    image-caption cosine similarity (DataComp's CLIP-score filter, jestkit.core.filter: the rule
    of `jestkit score --keep`), read from the reference's cache; learners draw from those rows.
    The rows are `data.kept`, ascending."""
    if not isinstance(keep, int | float) or not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    cache = load_reference(ref_dir, data, loss).cache
    rows = cache.lookup(data.pool.ids, ["image", "text"])
    kept = keep_top(similarity(rows["image"], rows["text"]), keep)
    return replace(data, kept=kept.sort().values)


def reference_info(ref_dir: str | os.PathLike) -> dict:
    return read_json_record(Path(ref_dir) / "reference.json", "a reference's reference.json",
                            REFERENCE_FIELDS)  # fmt: skip
