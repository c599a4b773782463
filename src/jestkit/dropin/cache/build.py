"""Building a cache, resumably and atomically (build_cache), and writing its manifest last
(finalize)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from jestkit.core.validate import check_int
from jestkit.dropin.cache.fingerprint import fingerprint_ids
from jestkit.dropin.cache.format import (
    _META_KEY,
    MANIFEST,
    CacheError,
    CacheMeta,
    _arrow_type,
    _check_layout,
    _check_meta,
    _fsync,
    _part_files,
    _part_path,
    _read_manifest,
    _read_part_bytes,
    _read_part_info,
    _read_part_table,
    _tmp_path,
    _to_arrow,
)
from jestkit.dropin.cache.ids import (
    _ID_TYPES,
    Ids,
    _as_ids,
    _check_unique,
    _ids_from_arrow,
    _ids_to_arrow,
    _show,
    _to_user,
)
from jestkit.engine.files import atomic_file, write_bytes_atomic


def build_cache(
    path: str | os.PathLike,
    ids: Ids,
    compute: Callable[[Ids], dict[str, torch.Tensor]],
    meta: CacheMeta,
    batch_size: int = 1024,
    rank: int = 0,
    world_size: int = 1,
    rows_per_part: int = 8192,
    progress: bool = True,
) -> None:
    """Compute `compute(batch_ids)` for every id and store it under `path`; resumable.

    ids: int64 (a tensor), str (a list of str) or uid128 (a UID_DTYPE array); compute gets each
    batch of ids the same way (a tensor, a list of str, a UID_DTYPE array) and returns
    {column: tensor of shape (len(batch_ids), *meta.columns[column])}. Parts of rows_per_part
    consecutive ids; part k is computed by rank k % world_size. With world_size 1 the manifest
    is written at the end; otherwise rank 0 calls finalize after a barrier.
    """
    if not callable(compute):
        raise TypeError(f"compute must be a callable batch_ids -> {{column: tensor}}, got "
                        f"{type(compute).__name__}")  # fmt: skip
    if not isinstance(meta, CacheMeta):
        raise TypeError(f"meta must be a CacheMeta, got {type(meta).__name__}")
    path = Path(path)
    kind, arr = _as_ids(ids)
    if arr.size == 0:
        raise ValueError("ids is empty; there is nothing to cache")
    _check_unique(kind, arr, "ids")
    batch_size = check_int("batch_size", batch_size)
    rows_per_part = check_int("rows_per_part", rows_per_part)
    world_size, rank = check_int("world_size", world_size), check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a cache folder: choose another path")
    path.mkdir(parents=True, exist_ok=True)

    n = arr.size
    num_parts = -(-n // rows_per_part)
    ids_fp = fingerprint_ids(arr)
    manifest = path / MANIFEST
    if manifest.exists():
        _check_meta(_read_manifest(path)["meta"], meta, where=str(path), building=True)

    # Which parts are already complete? Every part in the folder must come from this build.
    done = set()
    for f in _part_files(path):
        info = _read_part_info(f)
        _check_meta(info["meta"], meta, where=str(f), building=True)
        _check_layout(info, f, ids_fp, rows_per_part, num_parts)
        done.add(info["part"])

    mine = [k for k in range(num_parts) if k % world_size == rank]
    todo = [k for k in mine if k not in done]
    for k in mine:  # a temp file of a part this rank owns is left over from a crash
        _tmp_path(_part_path(path, k)).unlink(missing_ok=True)
    if todo and manifest.exists():  # a part went missing: the cache is not complete any more
        manifest.unlink(missing_ok=True)

    def rows(k: int) -> int:
        return min(rows_per_part, n - k * rows_per_part)

    bar = tqdm(
        total=sum(rows(k) for k in mine),
        initial=sum(rows(k) for k in mine if k in done),
        desc=f"caching {path}",
        unit="ex",
        disable=not progress or rank != 0,
    )
    with bar:
        for k in todo:
            part_ids = arr[k * rows_per_part : k * rows_per_part + rows(k)]
            info = {
                "meta": meta.to_dict(),
                "part": k,
                "num_parts": num_parts,
                "rows_per_part": rows_per_part,
                "rows": int(part_ids.size),
                "id_kind": kind,
                "ids_fingerprint": ids_fp,
            }
            _write_part(path, k, kind, part_ids, compute, meta, info, batch_size, bar)

    if world_size == 1:
        finalize(path, arr, meta)


def _write_part(path, k, kind, part_ids, compute, meta, info, batch_size, bar) -> None:
    """Compute one part batch by batch into a temp file, then rename it into place
    (jestkit.engine.files.atomic_file: never written through a symlink)."""
    schema = pa.schema(
        [pa.field("id", _ID_TYPES[kind])]
        + [pa.field(c, _arrow_type(s)) for c, s in meta.columns.items()],
        metadata={_META_KEY: json.dumps(info).encode()},
    )
    final = _part_path(path, k)
    with atomic_file(final) as f, pq.ParquetWriter(f, schema, write_page_checksum=True) as writer:
        for start in range(0, part_ids.size, batch_size):
            batch = part_ids[start : start + batch_size].copy()
            with torch.no_grad():
                out = compute(_to_user(kind, batch))
            arrays = [_ids_to_arrow(kind, batch)]
            arrays += [_to_arrow(c, s, out, kind, batch) for c, s in meta.columns.items()]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            bar.update(batch.size)
    _fsync(path)  # a hard kill leaves part-K.parquet.tmp; the next run removes it


def finalize(path: str | os.PathLike, ids: Ids, meta: CacheMeta) -> None:
    """Check every part is present, readable and holds exactly `ids`, then write the manifest
    (with each part's size and sha256) atomically.

    Rank 0 calls this after a barrier once every rank's build_cache has returned.
    """
    path = Path(path)
    kind, arr = _as_ids(ids)
    _check_unique(kind, arr, "ids")
    ids_fp = fingerprint_ids(arr)
    files = _part_files(path)
    if not files:
        raise CacheError(f"no parts in {path}; run build_cache on every rank before finalize")

    infos = {}
    for f in files:
        info = _read_part_info(f)
        _check_meta(info["meta"], meta, where=str(f), building=True)
        rows_per_part = info["rows_per_part"]
        _check_layout(info, f, ids_fp, rows_per_part, -(-arr.size // rows_per_part))
        if infos and info["rows_per_part"] != next(iter(infos.values()))[1]["rows_per_part"]:
            raise CacheError(f"{path} holds parts with different rows_per_part; delete the folder")
        infos[info["part"]] = (f, info)
    num_parts = next(iter(infos.values()))[1]["num_parts"]
    missing = [k for k in range(num_parts) if k not in infos]
    if missing:
        raise CacheError(
            f"cache {path} is missing {len(missing)} of {num_parts} parts (part indices "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}): some ranks have not finished; "
            "call finalize after every rank's build_cache has returned, or re-run to resume"
        )

    stored, entries = [], []
    for k in range(num_parts):
        f = infos[k][0]
        fix = f"delete {f.name} and re-run the build to recompute it"
        raw = _read_part_bytes(f, None, fix)
        table = _read_part_table(raw, f, kind, meta, fix)
        stored.append(_ids_from_arrow(kind, table["id"]))
        entries.append(
            {
                "file": f.name,
                "rows": infos[k][1]["rows"],
                "bytes": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
        )
    stored = np.concatenate(stored)
    if stored.size != arr.size or not bool((stored == arr).all()):
        have, want = set(_show(kind, stored, None)), set(_show(kind, arr, None))
        raise CacheError(
            f"cache {path} does not hold exactly the given ids: {len(want - have)} missing "
            f"(e.g. {sorted(want - have)[:10]}), {len(have - want)} unexpected, "
            f"{stored.size - len(have)} duplicated; delete the folder and rebuild"
        )

    manifest = {
        "meta": meta.to_dict(),
        "num_rows": int(arr.size),
        "rows_per_part": infos[0][1]["rows_per_part"],
        "id_kind": kind,
        "ids_fingerprint": ids_fp,
        "parts": entries,
    }
    write_bytes_atomic(json.dumps(manifest, indent=1).encode(), path / MANIFEST)
    _fsync(path)
    for f in path.glob("part-*.parquet.tmp"):  # leftovers of crashed runs; every rank is done
        f.unlink(missing_ok=True)
