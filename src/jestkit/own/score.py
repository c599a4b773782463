"""`jestkit score`: the reference cache of your shards, and DataComp subsets from it.

A reference folder for shards holds, like `jestkit reference`'s for Fashion-MNIST:

    reference.json   the reference's fingerprint, loss, logit scale and bias, inputs, the shards
    cache/           its image and text embeddings of every good sample, keyed by the sample's
                     id (a string: the json's uid or the WebDataset key; jestkit.dropin.cache)

How it is built. The shards are read twice in stream order (ShardPool with no shuffle buffer):
once to list the ids of the samples that decode (a duplicated id stops the build naming both
shards; bad samples are skipped and counted, as in training), then again to score them, batch by
batch, in the order of the cache's parts. The build is resumable (complete parts are kept; a
resumed build reads, without scoring, the samples of the parts already done) and, under
torchrun, sharded over the ranks (jestkit.dropin.distributed.build_cache_sharded: part k on
rank k % world size).

What is checked when training reads it (load_stream_reference): the reference.json's model
fingerprint against the cache's, the loss against the run's, and the data: the cache's data
fingerprint is of the shard files' names, sizes and contents (jestkit.data.shards.shard_digest:
each tar member's header and caption bytes, a Parquet file's footer and caption and id columns;
images are not decoded, and an uncompressed tar's images are skipped over, not read), so a cache
of other or re-captioned shards is refused, and scoring them into the same folder is refused
rather than mixed with the stale parts; an id the loop draws that is missing from the cache
raises a KeyError naming it.

The reference model is an open_clip checkpoint (with its config: --open_clip) or a jestkit
checkpoint.pt of a `jestkit train` run on shards (jestkit's dual encoder with --model.* and
--shards.vocab_size; e.g. a uniform run on your curated shards).

DataComp subsets (`--keep F --subset OUT.npy`): the uids of the share F of cached samples with
the highest reference image-text similarity (DataComp's "CLIP score" filter), as a sorted .npy
of uids (jestkit.dropin.cache.save_datacomp_subset); the ids must be 32-hex-digit uids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from jestkit.data.shards import ShardPool
from jestkit.data.stream import StreamSource
from jestkit.dropin.cache import (
    CacheError,
    CacheMeta,
    ReferenceCache,
    fingerprint_state_dict,
    parse_uids,
    save_datacomp_subset,
)
from jestkit.dropin.distributed import Distributed, build_cache_sharded
from jestkit.engine.checkpoint import is_checkpoint, load_checkpoint, write_json_atomic
from jestkit.engine.device import resolve_device
from jestkit.engine.rundir import check_score_dir
from jestkit.models.factory import ModelConfig, build_model
from jestkit.own.run import OwnRun, build_source, shards_fingerprint


def _reference_model(run: OwnRun, model_config: ModelConfig, loss: str) -> tuple[nn.Module, str]:
    """The frozen reference scoring the shards, and a description of its inputs."""
    path = run.own.reference
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"--reference must be the reference model's checkpoint file, got {path!r}"
        )
    if run.own.open_clip is not None:
        from jestkit.openclip.dual import open_clip_reference_file  # open_clip is optional

        reference = open_clip_reference_file(run.own.open_clip, path)
        if reference.loss_name != loss:
            raise ValueError(
                f"the reference {run.own.open_clip!r} is a {reference.loss_name} model: set "
                f"--loss {reference.loss_name}"
            )
        return reference, f"open_clip {run.own.open_clip}"
    if not is_checkpoint(Path(path)):
        raise ValueError(
            f"{path} is not a jestkit checkpoint: give an open_clip config with --open_clip "
            "for an open_clip checkpoint"
        )
    state = load_checkpoint(Path(path))
    model = build_model(model_config, run.shards.vocab_size, loss)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(
            f"{path} does not fit --model.* and --shards.vocab_size {run.shards.vocab_size} "
            f"with loss {loss!r}: {str(err).splitlines()[0]}"
        ) from err
    model.eval().requires_grad_(False)
    return model, f"jestkit {asdict(model_config)} vocab {run.shards.vocab_size}"


def _in_order(source: StreamSource, transform="same") -> ShardPool:
    """A fresh pool over the source's shards in stream order (no shuffle buffer)."""
    pool = source.pool
    transform = pool.transform if transform == "same" else transform
    return ShardPool(pool.shards, pool.config, transform=transform, buffer_size=0)


class _InOrder:
    """compute(ids) for build_cache: reads the stream forward to the asked ids and scores them."""

    def __init__(self, source: StreamSource, model: nn.Module, device: torch.device):
        self.samples: Iterator[dict] = iter(source.pool)
        self.source, self.model, self.device = source, model, device

    def __call__(self, ids: list[str]) -> dict[str, torch.Tensor]:
        got = []
        for sample in self.samples:
            if sample["id"] == ids[len(got)]:
                got.append(sample)
                if len(got) == len(ids):
                    break
            elif got:
                raise CacheError(f"the shards changed while scoring: {sample['id']!r} came "
                                 f"where {ids[len(got)]!r} was listed")  # fmt: skip
        if len(got) < len(ids):
            raise CacheError(f"the shards changed while scoring: {ids[len(got)]!r} not found")
        images = torch.stack([s["image"] for s in got]).to(self.device)
        tokens = self.source.tokenize([s["caption"] for s in got]).to(self.device)
        emb = self.model.embeddings(images, tokens)
        return {"image": emb.image.cpu(), "text": emb.text.cpu()}


def score_shards(
    run: OwnRun,
    model_config: ModelConfig,
    loss: str,
    out_dir: str | os.PathLike,
    batch_size: int = 256,
    progress: bool = True,
    dist: Distributed | None = None,
    rows_per_part: int = 8192,
    write_config=None,
) -> dict:
    """Build OUT/cache and OUT/reference.json for run.shards with the reference checkpoint
    run.own.reference (see the module docstring); returns reference.json's contents. OUT must
    be a score's folder or new (jestkit.engine.rundir.check_score_dir). write_config(OUT): called
    by rank 0 once the cache is built, before reference.json (the CLI writes config.yaml), so
    a refused or failed build rewrites no record."""
    dist = dist or Distributed()
    check_score_dir(out_dir)
    device = resolve_device(run.own.device)
    model, inputs = _reference_model(run, model_config, loss)
    model = model.to(device)
    source = build_source(run, model)
    listing = _in_order(source, transform=lambda image: 0)  # decoded, not transformed
    ids = [s["id"] for s in listing]
    out = Path(out_dir)
    fingerprint = fingerprint_state_dict(model.state_dict())
    emb = model.embeddings(*_probe(source, device))
    meta = CacheMeta(fingerprint, shards_fingerprint(run.shards),
                     {"image": [emb.image.shape[1]], "text": [emb.text.shape[1]]})  # fmt: skip
    source.pool = _in_order(source)
    build_cache_sharded(out / "cache", ids, _InOrder(source, model, device), meta,
                        group=dist.group, batch_size=batch_size, rows_per_part=rows_per_part,
                        progress=progress)  # fmt: skip
    info = {
        "model_fingerprint": fingerprint,
        "data_fingerprint": meta.data_fingerprint,
        "loss": loss,
        "logit_scale": float(model.logit_scale),
        "logit_bias": float(model.logit_bias),
        "inputs": inputs,
        "shards": run.shards.shards(),
        "samples": len(ids),
        "skipped": dict(listing.skipped),
    }
    if dist.is_main:
        if write_config is not None:
            write_config(out)
        write_json_atomic(info, out / "reference.json")
    return info


def _probe(source: StreamSource, device: torch.device):
    """One sample's inputs, to learn the embedding width."""
    sample = next(iter(_in_order(source)), None)
    if sample is None:
        raise ValueError(f"no good sample in {source.pool.shards}")
    return sample["image"][None].to(device), source.tokenize([sample["caption"]]).to(device)


def export_subset(ref_dir: str | os.PathLike, keep: float, path: str | os.PathLike) -> dict:
    """The share `keep` of the cached samples with the highest reference image-text cosine
    similarity, saved as a DataComp subset (.npy of uids) at `path`."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    ref = Path(ref_dir)
    info = json.loads((ref / "reference.json").read_text())
    cache = ReferenceCache.open(ref / "cache", info["model_fingerprint"], info["data_fingerprint"])
    ids = list(cache.ids())
    rows = cache.lookup(ids, ["image", "text"])
    score = torch.nn.functional.cosine_similarity(rows["image"], rows["text"], dim=-1)
    n = max(1, round(keep * len(ids)))
    top = torch.argsort(score, descending=True, stable=True)[:n]
    try:
        uids = parse_uids([ids[i] for i in top.tolist()])
    except ValueError as err:
        raise ValueError(f"a DataComp subset needs 32-hex-digit uids as ids: {err}") from err
    save_datacomp_subset(path, uids)
    threshold = float(score[top[-1]])
    return {"kept": n, "of": len(ids), "min_similarity": threshold, "path": str(path)}


__all__ = ["export_subset", "score_shards"]
