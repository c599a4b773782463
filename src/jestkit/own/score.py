"""`jestkit score`: the reference cache of your shards, and DataComp subsets from it.

A reference folder for shards holds, like `jestkit reference`'s for Fashion-MNIST:

    reference.json   the reference's fingerprint, loss, logit scale and bias, inputs, the shards
    cache/           its image and text embeddings of every good sample, keyed by the sample's
                     id (a string: the json's uid or the WebDataset key; jestkit.dropin.cache)

How it is built. The shards are read twice, the work split over torchrun's ranks. First every
shard is listed, shard i by rank i % world_size: the ids of its samples that decode, in file
order (bad samples are skipped and counted, as in training); the ranks share their lists, and a
duplicated id stops the build naming both shards. The cache's ids are these lists in shard order,
cut into parts (jestkit.dropin.distributed.build_cache_sharded: part k on rank k % world_size).
Then each rank scores its parts: it reads only the shards that hold their ids, forward, and
decodes only those samples. So each sample is decoded once to list it and once to score it,
on one rank each time. The build is resumable (complete parts are kept and not read again), on
any number of ranks. The folder is locked while `jestkit score` writes it (as `jestkit train`
locks its run folder): a second scorer on the same --out is refused at once.

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

Subsets (`--keep F --subset FILE`): the share F of cached samples with the highest reference
image-text similarity (DataComp's "CLIP score" filter). FILE.npy: DataComp's format, a sorted
.npy of uids (jestkit.dropin.cache.save_datacomp_subset), which needs 32-hex-digit uids as ids
(DataComp's, in KEY.json); FILE.txt: the kept ids, one a line, sorted: for plain img2dataset
shards, whose ids are their keys (`webdataset`'s `.select(lambda s: s["__key__"] in keep)`
filters on them). Which one a subset can be is checked once the shards are listed, before any
sample is scored.

Kept shards (`--keep F --subset_shards DIR`): the same share written as WebDataset shards, one
DIR/kept-NNNN.tar per pool shard holding its kept samples (each sample's image bytes as read, its
caption as KEY.txt and its id as the uid in KEY.json, so the ids stay the same), then
DIR/kept.json last: the offline filter, ready for `jestkit train --shards.pattern 'DIR/*.tar'`.
A folder whose kept.json says the same cache and share is left as it is (an interrupted plan's
pilots read it again); any other content is refused.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from jestkit.core.filter import keep_top, similarity
from jestkit.data.shards import DuplicateIdError, ShardPool, read_image_file
from jestkit.data.stream import ShardsConfig
from jestkit.dropin.cache import (
    CacheError,
    CacheMeta,
    ReferenceCache,
    fingerprint_state_dict,
    parse_uids,
    save_datacomp_subset,
)
from jestkit.dropin.distributed import Distributed, build_cache_sharded
from jestkit.engine.checkpoint import is_checkpoint, load_checkpoint
from jestkit.engine.device import resolve_device
from jestkit.engine.files import read_json_record, tmp_path, write_bytes_atomic, write_json_atomic
from jestkit.engine.reference import REFERENCE_FIELDS
from jestkit.engine.rundir import check_score_dir
from jestkit.models.factory import ModelConfig, build_model
from jestkit.own.run import OwnRun, load_stream_reference, model_inputs, shards_fingerprint


def _reference_model(run: OwnRun, model_config: ModelConfig, loss: str) -> tuple[nn.Module, str]:
    """The frozen reference scoring the shards, and a description of its inputs."""
    path = run.own.reference
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"--reference must be the reference model's checkpoint file, got {path!r}"
        )
    if run.own.open_clip is not None:
        from jestkit.openclip.dual import open_clip_model  # open_clip is optional

        reference = open_clip_model(run.own.open_clip, path, frozen=True)
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


def list_my_shards(pool: ShardPool, rank: int = 0, world_size: int = 1) -> dict:
    """{shard index: (ids of its good samples in file order, bad samples by reason)} of the
    shards i with i % world_size == rank, each read and decoded (not transformed) here."""
    listed = {}
    for i in range(rank, len(pool.shards), world_size):
        one = ShardPool([pool.shards[i]], pool.config, transform=lambda image: 0, buffer_size=0,
                        rank=0, world_size=1, stream=0, streams=1, shuffle_shards=False)
        listed[i] = ([s["id"] for s in one], dict(one.skipped))  # fmt: skip
    return listed


def merge_lists(shards: list[str], listed: dict) -> tuple[list[str], list[int], dict]:
    """Every rank's list_my_shards merged: the ids in stream order (shard by shard), each one's
    shard, and the bad samples by reason; an id in two shards raises DuplicateIdError naming
    both."""
    ids, where, skipped, first = [], [], Counter(), {}
    for i in range(len(shards)):
        shard_ids, bad = listed[i]
        for uid in shard_ids:
            if uid in first:
                raise DuplicateIdError(
                    f"id {uid!r} appears twice in the stream: in {shards[first[uid]]} and in "
                    f"{shards[i]}; ids must be unique"
                )
            first[uid] = i
        ids += shard_ids
        where += [i] * len(shard_ids)
        skipped.update(bad)
    return ids, where, dict(skipped)


def _list_shards(pool: ShardPool, dist: Distributed) -> tuple[list[str], list[int], dict]:
    """The listing, shard i on rank i % world_size, shared by every rank."""
    listed = list_my_shards(pool, dist.rank, dist.world_size)
    if dist.world_size > 1:
        every = [None] * dist.world_size
        torch.distributed.all_gather_object(every, listed, group=dist.group)
        listed = {i: v for part in every for i, v in part.items()}
    return merge_lists(pool.shards, listed)


class _Scorer:
    """compute(ids) for build_cache: reads, forward, only the shards holding the asked ids and
    decodes only those samples, then scores them."""

    def __init__(self, pool: ShardPool, where: dict[str, int], tokenize, model: nn.Module,
                 device: torch.device):  # fmt: skip
        self.pool, self.where, self.tokenize = pool, where, tokenize
        self.model, self.device = model, device
        self._shard, self._reader = None, iter(())
        self.opened: list[int] = []  # the shards read, in order (a shard may be reopened)

    def _find(self, uid: str) -> dict:
        shard = self.where[uid]
        if shard != self._shard:
            self._shard, self._reader = shard, self.pool.records(shard)
            self.opened.append(shard)
        for rec in self._reader:
            if rec.id == uid and rec.bad is None:
                sample = self.pool.decode(rec)
                if isinstance(sample, str):
                    raise CacheError(
                        f"the shards changed while scoring: {uid!r} in "
                        f"{self.pool.shards[shard]} is now bad ({sample})"
                    )
                return sample
        self._shard = None  # the next id reopens its shard
        raise CacheError(f"the shards changed while scoring: {uid!r} not found in "
                         f"{self.pool.shards[shard]} where it was listed")  # fmt: skip

    def inputs(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        got = [self._find(uid) for uid in ids]
        images = torch.stack([s["image"] for s in got]).to(self.device)
        return images, self.tokenize([s["caption"] for s in got]).to(self.device)

    def __call__(self, ids: list[str]) -> dict[str, torch.Tensor]:
        emb = self.model.embeddings(*self.inputs(ids))
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
    subset: str | os.PathLike | None = None,
) -> dict:
    """Build OUT/cache and OUT/reference.json for run.shards with the reference checkpoint
    run.own.reference (see the module docstring); returns reference.json's contents. OUT must
    be a score's folder or new (jestkit.engine.rundir.check_score_dir). write_config(OUT): called
    by rank 0 once the cache is built, before reference.json (the CLI writes config.yaml), so
    a refused or failed build rewrites no record. subset: the subset file to be written after
    (export_subset); its format is checked against the ids before any sample is scored."""
    dist = dist or Distributed()
    if run.shards.workers or run.shards.streams is not None:
        raise ValueError(
            "--shards.workers and --shards.streams are for jestkit train: jestkit score splits "
            "the shards over torchrun's ranks itself (each listed by one rank, each part "
            "scored by one rank)"
        )
    check_score_dir(out_dir)
    device = resolve_device(run.own.device)
    model, inputs = _reference_model(run, model_config, loss)
    model = model.to(device)
    transform, tokenize = model_inputs(run, model)
    pool = run.shards.pool(transform)
    ids, where, skipped = _list_shards(pool, dist)
    if not ids:
        raise ValueError(f"no good sample in {', '.join(pool.shards[:3])}")
    if subset is not None:
        check_subset_ids(ids, subset)
    out = Path(out_dir)
    fingerprint = fingerprint_state_dict(model.state_dict())
    emb = model.embeddings(*_Scorer(pool, {ids[0]: where[0]}, tokenize, model, device)
                           .inputs(ids[:1]))  # one sample: the embedding widths
    meta = CacheMeta(fingerprint, shards_fingerprint(pool.shards),
                     {"image": [emb.image.shape[1]], "text": [emb.text.shape[1]]})  # fmt: skip
    scorer = _Scorer(pool, dict(zip(ids, where, strict=True)), tokenize, model, device)
    build_cache_sharded(out / "cache", ids, scorer, meta, group=dist.group,
                        batch_size=batch_size, rows_per_part=rows_per_part,
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
        "skipped": skipped,
    }
    if dist.is_main:
        if write_config is not None:
            write_config(out)
        write_json_atomic(info, out / "reference.json")
    return info


SUBSET_FORMATS = (".npy", ".txt")


def subset_format(path: str | os.PathLike) -> str:
    """'.npy' (DataComp's uids) or '.txt' (ids, one a line), by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUBSET_FORMATS:
        raise ValueError(f"--subset {path}: give FILE.npy (DataComp's subset of uids) or "
                         "FILE.txt (the kept ids, one a line)")  # fmt: skip
    return suffix


def check_subset_ids(ids: list[str], path: str | os.PathLike) -> None:
    """Refuse a DataComp subset (.npy) of ids that are not 32-hex-digit uids, saying what to do
    instead: a keys file (.txt), or uids in the samples' json."""
    if subset_format(path) != ".npy":
        return
    bad = [i for i in ids if len(i) != 32 or any(c not in "0123456789abcdefABCDEF" for c in i)]
    if bad:
        raise ValueError(
            f"--subset {path}: a DataComp subset (.npy) holds 32-hex-digit uids, and "
            f"{len(bad)} of the {len(ids)} samples' ids are not (e.g. {bad[0]!r}: img2dataset's "
            f"keys, as its shards have no uid in KEY.json). Write the kept ids as a keys file "
            f"instead, --subset {Path(path).with_suffix('.txt')} (one id a line; webdataset "
            f"filters on __key__), or give every sample a 'uid' in its KEY.json (DataComp's)"
        )


def kept_ids(ref_dir: str | os.PathLike, keep: float) -> tuple[list[str], int, float, dict]:
    """(the ids of the share `keep` of the cached samples with the highest reference image-text
    cosine similarity, highest first; the cache's size; the lowest kept similarity;
    reference.json's contents)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    ref = Path(ref_dir)
    info = read_json_record(ref / "reference.json", "a reference's reference.json",
                            REFERENCE_FIELDS, f"score the shards again into {ref}")  # fmt: skip
    cache = ReferenceCache.open(ref / "cache", info["model_fingerprint"], info["data_fingerprint"])
    ids = list(cache.ids())
    rows = cache.lookup(ids, ["image", "text"])
    score = similarity(rows["image"], rows["text"])
    top = keep_top(score, keep)
    return [ids[i] for i in top.tolist()], len(ids), float(score[top[-1]]), info


def export_subset(ref_dir: str | os.PathLike, keep: float, path: str | os.PathLike) -> dict:
    """The share `keep` of the cached samples with the highest reference image-text cosine
    similarity, saved at `path`: a DataComp subset (.npy of uids), or their ids one a line,
    sorted (.txt)."""
    fmt = subset_format(path)
    kept, of, threshold, _ = kept_ids(ref_dir, keep)
    if fmt == ".txt":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic("".join(f"{i}\n" for i in sorted(kept)).encode(), Path(path))
    else:
        check_subset_ids(kept, path)
        save_datacomp_subset(path, parse_uids(kept))
    return {"kept": len(kept), "of": of, "min_similarity": threshold, "path": str(path)}


KEPT_RECORD = "kept.json"


def check_subset_shards_dir(folder: str | os.PathLike) -> None:
    """Refuse, before any work, a --subset_shards folder that is a file or holds anything but
    kept shards (kept-NNNN.tar), their kept.json, and the PATH.tmp files a write cut short
    leaves of either (jestkit.engine.files.atomic_file: the next write replaces them)."""
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ValueError(f"--subset_shards {folder} is not a folder: give a new folder")
    if folder.is_dir():
        foreign = [p.name for p in folder.iterdir() if not _written_here(p)]
        if foreign:
            raise ValueError(f"--subset_shards {folder} holds {', '.join(sorted(foreign)[:3])}: "
                             "the kept shards are written only into a new folder or one they "
                             "were written into before")  # fmt: skip


def _written_here(path: Path) -> bool:
    """Whether export_subset_shards writes `path`: kept.json, kept-NNNN.tar, or the tmp file
    either is written to first (atomic_file's tmp_path)."""
    final = path.with_suffix("")  # kept.json.tmp -> kept.json
    name = final.name if tmp_path(final) == path else path.name
    return name == KEPT_RECORD or (name.startswith("kept-") and name.endswith(".tar"))


def export_subset_shards(ref_dir: str | os.PathLike, keep: float, shards: ShardsConfig,
                         folder: str | os.PathLike) -> dict:  # fmt: skip
    """Write the share `keep` of the cached samples with the highest reference image-text
    similarity as WebDataset shards in `folder` (see the module docstring); shards: the pool
    the cache at ref_dir was built from (its fingerprint is checked). Returns kept.json's
    contents."""
    from PIL import Image

    check_subset_shards_dir(folder)
    folder = Path(folder)
    kept, of, threshold, info = kept_ids(ref_dir, keep)
    record = {"reference": str(ref_dir), "data_fingerprint": info["data_fingerprint"],
              "model_fingerprint": info["model_fingerprint"], "keep": keep, "kept": len(kept),
              "of": of, "min_similarity": threshold}  # fmt: skip
    done = folder / KEPT_RECORD
    if done.is_file():
        before = read_json_record(done, "a kept shards folder's kept.json", fix="choose "
                                  "another --subset_shards folder")  # fmt: skip
        if {k: before.get(k) for k in record if k != "reference"} == \
                {k: v for k, v in record.items() if k != "reference"}:  # fmt: skip
            return before
        raise ValueError(f"--subset_shards {folder} holds the kept shards of another cache or "
                         "share: choose another folder")  # fmt: skip
    pool = shards.pool(None, mode=None)
    load_stream_reference(ref_dir, pool, info["loss"])  # the cache must be of these shards
    wanted = set(kept)
    folder.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(pool.shards):
        buffer, n = io.BytesIO(), 0
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for rec in pool.records(index):
                if rec.bad is not None or rec.id not in wanted:
                    continue
                image = rec.image if rec.image is not None else \
                    read_image_file(rec.path, shards.max_sample_bytes)  # fmt: skip
                if isinstance(image, str):  # unreadable now: it was cached, so it changed
                    raise ValueError(f"{path}: the image of {rec.id!r} cannot be read ({image})")
                with Image.open(io.BytesIO(image)) as im:  # the header only: its format
                    ext = {"JPEG": "jpg"}.get(im.format, (im.format or "png").lower())
                key = f"{index:04d}{n:08d}"
                for suffix, data in ((ext, image), ("txt", rec.caption.encode()),
                                     ("json", json.dumps({"uid": rec.id}).encode())):
                    member = tarfile.TarInfo(f"{key}.{suffix}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
                n += 1
        if n:
            write_bytes_atomic(buffer.getvalue(), folder / f"kept-{index:04d}.tar")
    write_json_atomic(record, done)
    return record


__all__ = ["check_subset_ids", "export_subset", "export_subset_shards", "score_shards"]
