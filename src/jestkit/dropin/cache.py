"""The reference cache: the frozen reference model's outputs for every training example, by id.

The reference never changes, so its outputs (image and text embeddings for the contrastive
losses, a per-example loss otherwise) are computed once and read back during training. They are
stored as Parquet in one folder:

    path/
      part-00000.parquet     rows 0 .. rows_per_part-1 of `ids` (in the order given to build_cache)
      part-00001.parquet     the next rows_per_part ids, and so on
      manifest.json          written last, atomically: the cache is valid only when it exists

Ids come in three kinds, found from what build_cache is given, and stored compactly:

    int64    a torch integer tensor (or numpy integer array)  -> Parquet int64 column `id`
    str      a list (or numpy array) of str, e.g. WebDataset keys  -> Arrow string column `id`
    uid128   a numpy array of dtype UID_DTYPE = np.dtype("u8,u8"), DataComp's 128-bit uids as
             (first 16 hex digits, last 16 hex digits); parse_uids makes one from hex strings
             -> fixed_size_binary(16) column `id`, the uid's 16 bytes big-endian (its hex)

Each part also has one float32 column per output (a fixed-size list for embeddings), and carries
in its Parquet metadata the fingerprints it was built with, its index, the id kind and the
fingerprint of the whole id list, so that parts of different builds are never mixed.

What is checked, so that a damaged cache is refused (a CacheError naming the file and saying to
rebuild) and never read as wrong rows:
  * every Parquet page carries a CRC-32 (write_page_checksum) verified on every read;
  * the manifest records each part's size and sha256, verified when the cache is opened, so a
    part that is truncated, replaced, renamed or taken from another build is refused;
  * each part's metadata must name its own index, the manifest's meta, id kind and row count;
  * a manifest that is not valid JSON or lacks a field is refused, as is an older format.

Building is resumable and its writes atomic: a part is written to `part-k.parquet.tmp` and
renamed with os.replace once complete, so an interrupted build leaves no half part; re-running
skips complete parts and overwrites left-over temp files. Part k belongs to rank k % world_size;
under torch.distributed every rank calls build_cache with its rank, and rank 0 calls finalize
after a barrier (with world_size 1, build_cache finalizes itself). finalize reads every part
back (verifying its page checksums), checks that the parts' ids are exactly `ids`, and writes
the manifest with the parts' checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

FORMAT_VERSION = 2  # 2: per-part sha256 in the manifest, page checksums, string and uid ids
MANIFEST = "manifest.json"
ID_KINDS = ("int64", "str", "uid128")
UID_DTYPE = np.dtype("u8,u8")  # DataComp's uid: (int(uid[:16], 16), int(uid[16:32], 16))
_UID_BE = np.dtype([("hi", ">u8"), ("lo", ">u8")])  # its 16 bytes as stored in Parquet
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_META_KEY = b"jestkit.cache"
_FIX = "rebuild it with `jestkit reference` (or delete the folder and build again)"

Ids = Any  # a torch integer tensor, a list of str, or a UID_DTYPE numpy array (see above)


class CacheError(ValueError):
    """A reference cache that is missing, incomplete, corrupt or built from something else."""


@dataclass(frozen=True)
class CacheMeta:
    """What a cache was built from, and what it holds.

    model_fingerprint: fingerprint_state_dict of the reference weights.
    data_fingerprint: fingerprint_ids of the example ids (plus anything else that changes the
        inputs, e.g. a tokenizer or data-config hash).
    columns: column name -> per-row shape, e.g. {"image": [128], "text": [128]} or {"loss": []}.
    """

    model_fingerprint: str
    data_fingerprint: str
    columns: dict[str, list[int]]
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.columns, dict) or not self.columns:
            raise ValueError(
                f"columns must be a non-empty dict name -> shape, got {self.columns!r}"
            )
        columns = {}
        for name, shape in self.columns.items():
            if not isinstance(name, str) or not name or name == "id":
                raise ValueError(
                    f"column name must be a non-empty string other than 'id': {name!r}"
                )
            shape = [int(s) for s in shape]
            if any(s <= 0 for s in shape):
                raise ValueError(f"column {name!r} has shape {shape}; dimensions must be positive")
            columns[name] = shape
        object.__setattr__(self, "columns", columns)  # normalise tuples to lists (JSON round trip)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CacheMeta:
        return cls(
            model_fingerprint=d["model_fingerprint"],
            data_fingerprint=d["data_fingerprint"],
            columns=d["columns"],
            format_version=int(d["format_version"]),
        )


# ----------------------------------------------------------------------------- ids


def parse_uids(uids: Sequence[str]) -> np.ndarray:
    """DataComp uids (32 hex digits each, e.g. '139e4a9b22a614771f06c700a8ebe150') as a
    UID_DTYPE array of (first 16 digits, last 16 digits) read as unsigned 64-bit integers."""
    if isinstance(uids, str) or not isinstance(uids, Sequence | np.ndarray):
        raise TypeError(f"uids must be a list of 32-digit hex strings, got {type(uids).__name__}")
    uids = list(uids)
    bad = [u for u in uids if not isinstance(u, str) or not _HEX32.fullmatch(u)]
    if bad:
        raise ValueError(
            f"{len(bad)} uid(s) are not 32 hex digits, e.g. {[_short(b) for b in bad[:5]]}"
        )
    out = np.empty(len(uids), UID_DTYPE)
    out["f0"] = [int(u[:16], 16) for u in uids]
    out["f1"] = [int(u[16:], 16) for u in uids]
    return out


def format_uids(uids: np.ndarray) -> list[str]:
    """The 32-digit lower-case hex strings of a UID_DTYPE array (the inverse of parse_uids)."""
    uids = _as_ids(uids, "uids")[1]
    return [
        f"{hi:016x}{lo:016x}"
        for hi, lo in zip(uids["f0"].tolist(), uids["f1"].tolist(), strict=True)
    ]


def save_datacomp_subset(path: str | os.PathLike, uids: np.ndarray | Sequence[str]) -> Path:
    """Write selected uids in DataComp's subset format, for its resharder.

    The format (DataComp's README, "Selecting samples"): a .npy file (np.save) holding a 1-d
    numpy structured array of dtype np.dtype("u8,u8"), each uid as (int(uid[:16], 16),
    int(uid[16:32], 16)), in lexicographic sorted order. `uids` is a UID_DTYPE array or a list
    of 32-digit hex strings; duplicates are refused. Returns the path written (atomically).
    """
    arr = parse_uids(uids) if not isinstance(uids, np.ndarray) else _as_ids(uids, "uids")[1]
    if arr.dtype != UID_DTYPE:
        raise TypeError(f"uids must be uid128 (dtype {UID_DTYPE}), got dtype {arr.dtype}")
    _check_unique("uid128", arr, "uids")
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"DataComp subset files end in .npy, got {path}")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.sort(arr))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_datacomp_subset(path: str | os.PathLike) -> np.ndarray:
    """Read a DataComp subset file (see save_datacomp_subset) as a UID_DTYPE array, refusing
    any other dtype or shape, or an unsorted or duplicated list."""
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 1 or not _is_uid_dtype(arr.dtype):
        raise ValueError(
            f"{path} is not a DataComp subset: dtype {arr.dtype}, shape {arr.shape}; "
            f"expected a 1-d array of dtype {UID_DTYPE}"
        )
    arr = arr.astype(UID_DTYPE)
    hi, lo = arr["f0"], arr["f1"]
    increasing = (hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))
    if not bool(increasing.all()):
        raise ValueError(f"{path} is not a DataComp subset: uids not sorted or duplicated")
    return arr


def _is_uid_dtype(dtype: np.dtype) -> bool:
    """Two unsigned 64-bit fields, in either byte order (np.save keeps the writer's)."""
    fields = [dtype[i] for i in range(len(dtype))] if dtype.names else []
    return len(fields) == 2 and all(f.kind == "u" and f.itemsize == 8 for f in fields)


def id_kind(ids: Ids) -> str:
    """'int64', 'str' or 'uid128': the kind of an id list (see the module docstring)."""
    return _as_ids(ids)[0]


def _as_ids(ids: Ids, what: str = "ids") -> tuple[str, np.ndarray]:
    """(kind, 1-d numpy array): int64, str (dtype object, of str) or uid128 (UID_DTYPE)."""
    if torch.is_tensor(ids):
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{what} must be an integer tensor, got dtype {ids.dtype}")
        arr = ids.detach().to("cpu", torch.int64).numpy()
    elif isinstance(ids, np.ndarray) and not (ids.dtype == object and ids.ndim == 1):
        arr = ids
    elif isinstance(ids, list | tuple | np.ndarray):
        ids = ids.tolist() if isinstance(ids, np.ndarray) else ids
        kinds = {_element_kind(v) for v in ids}
        if len(kinds) > 1:
            example = {k: next(v for v in ids if _element_kind(v) == k) for k in sorted(kinds)}
            raise TypeError(f"{what} mix kinds of id: {example}; use one kind for every id")
        kind = kinds.pop() if kinds else "int64"
        if kind == "str":
            arr = np.empty(len(ids), dtype=object)
            arr[:] = list(ids)
        elif kind == "int64":
            try:
                arr = np.asarray(ids, dtype=np.int64) if ids else np.zeros(0, np.int64)
            except OverflowError as e:
                raise ValueError(f"{what} hold integers outside the int64 range") from e
        else:
            raise TypeError(
                f"{what} must be ints, str or DataComp uids; got {type(ids[0]).__name__} "
                f"{ids[0]!r:.60}"
            )
    else:
        raise TypeError(
            f"{what} must be an integer tensor, a list of str or a numpy array of dtype "
            f"{UID_DTYPE} (uid128), got {type(ids).__name__}"
        )
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-d, got shape {tuple(arr.shape)}")
    if arr.dtype.names is not None:
        if not _is_uid_dtype(arr.dtype):
            raise TypeError(f"{what} as a structured array must have dtype {UID_DTYPE} (uid128)")
        return "uid128", arr.astype(UID_DTYPE)
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"{what} holds values above the int64 range")
        return "int64", arr.astype(np.int64)
    if arr.dtype.kind == "U" or arr.dtype == object:
        out = np.empty(arr.size, dtype=object)
        out[:] = arr.tolist()
        nul = [v for v in out if "\x00" in v]
        if nul:  # numpy's fixed-width strings would drop a trailing NUL: "a" == "a\x00"
            raise ValueError(f"{what} must not contain NUL characters, e.g. {_short(nul[0])}")
        return "str", out
    raise TypeError(f"{what} has dtype {arr.dtype}; ids are integers, str or uid128")


def _element_kind(v: Any) -> str:
    if isinstance(v, str):
        return "str"
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return "int64"
    return type(v).__name__


def _query_ids(ids: Ids, kind: str) -> np.ndarray:
    """Lookup ids converted to the cache's kind: uid128 caches also take 32-digit hex strings."""
    got, arr = _as_ids(ids)
    if got == "str" and kind == "uid128":
        return parse_uids(arr.tolist())
    if got != kind:
        raise TypeError(f"the cache is keyed by {kind} ids, got {got} ids")
    return arr


def _show(kind: str, arr: np.ndarray, n: int = 10) -> list:
    """A few ids as readable values (uids as hex) for error messages."""
    arr = arr[:n]
    return format_uids(arr) if kind == "uid128" else arr.tolist()


def _short(v: Any) -> str:
    return repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."


def _sort_key(kind: str, arr: np.ndarray) -> np.ndarray:
    """An array that numpy sorts and searches: str as fixed-width unicode, the rest as is."""
    return arr.astype(str) if kind == "str" else arr


# ----------------------------------------------------------------------------- fingerprints


def fingerprint_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 hex over the sorted names, dtypes, shapes and bytes of every tensor."""
    h = hashlib.sha256(b"jestkit-state-dict-v1\n")
    for name in sorted(state_dict):
        t = state_dict[name]
        if not torch.is_tensor(t):
            raise TypeError(f"state_dict[{name!r}] is a {type(t).__name__}, not a tensor")
        t = t.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header = json.dumps([name, str(t.dtype), list(t.shape), len(raw)])
        h.update(header.encode() + b"\n")
        h.update(raw)
    return h.hexdigest()


def fingerprint_ids(ids: Ids, *extra: str) -> str:
    """sha256 hex over the id list, in order, and any extra strings (tokenizer, data config).

    Any id kind; int64 ids hash exactly as in earlier versions, and lists of different kinds
    never share a fingerprint (each kind has its own header)."""
    kind, arr = _as_ids(ids)
    if kind == "int64":
        h = hashlib.sha256(b"jestkit-ids-v1\n")
        h.update(f"{arr.size}\n".encode())
        h.update(arr.astype("<i8").tobytes())
    elif kind == "str":
        h = hashlib.sha256(b"jestkit-ids-str-v1\n")
        h.update(f"{arr.size}\n".encode())
        for s in arr.tolist():
            b = s.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little") + b)
    else:
        h = hashlib.sha256(b"jestkit-ids-uid128-v1\n")
        h.update(f"{arr.size}\n".encode())
        h.update(_uid_bytes(arr))
    for s in extra:
        b = str(s).encode()
        h.update(f"\n{len(b)}\n".encode() + b)
    return h.hexdigest()


def _uid_bytes(arr: np.ndarray) -> bytes:
    be = np.empty(arr.size, _UID_BE)
    be["hi"], be["lo"] = arr["f0"], arr["f1"]
    return be.tobytes()


# ----------------------------------------------------------------------------- building


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
    path = Path(path)
    kind, arr = _as_ids(ids)
    if arr.size == 0:
        raise ValueError("ids is empty; there is nothing to cache")
    _check_unique(kind, arr, "ids")
    if batch_size < 1 or rows_per_part < 1:
        raise ValueError(
            f"batch_size and rows_per_part must be >= 1, got {batch_size}, {rows_per_part}"
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
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
    """Compute one part batch by batch into a temp file, then rename it into place."""
    schema = pa.schema(
        [pa.field("id", _ID_TYPES[kind])]
        + [pa.field(c, _arrow_type(s)) for c, s in meta.columns.items()],
        metadata={_META_KEY: json.dumps(info).encode()},
    )
    final = _part_path(path, k)
    tmp = _tmp_path(final)
    try:
        with pq.ParquetWriter(tmp, schema, write_page_checksum=True) as writer:
            for start in range(0, part_ids.size, batch_size):
                batch = part_ids[start : start + batch_size].copy()
                with torch.no_grad():
                    out = compute(_to_user(kind, batch))
                arrays = [_ids_to_arrow(kind, batch)]
                arrays += [_to_arrow(c, s, out, kind, batch) for c, s in meta.columns.items()]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                bar.update(batch.size)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a hard kill leaves it instead; the next run removes it
        raise
    _fsync(tmp)
    os.replace(tmp, final)
    _fsync(path)


_ID_TYPES = {"int64": pa.int64(), "str": pa.string(), "uid128": pa.binary(16)}


def _to_user(kind: str, arr: np.ndarray) -> Ids:
    """Ids as build_cache's compute and ReferenceCache.ids give them out."""
    if kind == "int64":
        return torch.from_numpy(arr.copy())
    return arr.tolist() if kind == "str" else arr.copy()


def _ids_to_arrow(kind: str, arr: np.ndarray) -> pa.Array:
    if kind == "uid128":
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(16), arr.size, [None, pa.py_buffer(_uid_bytes(arr))]
        )
    return pa.array(arr.tolist() if kind == "str" else arr, type=_ID_TYPES[kind])


def _ids_from_arrow(kind: str, col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if col.null_count:
        raise ValueError("the id column has nulls")
    if kind == "uid128":
        raw = col.buffers()[1]
        be = np.frombuffer(raw, _UID_BE, count=len(col), offset=col.offset * 16)
        out = np.empty(len(col), UID_DTYPE)
        out["f0"], out["f1"] = be["hi"], be["lo"]
        return out
    if kind == "str":
        out = np.empty(len(col), dtype=object)
        out[:] = col.to_pylist()
        return out
    return col.to_numpy().astype(np.int64)


def _arrow_type(shape: list[int]) -> pa.DataType:
    if not shape:
        return pa.float32()
    return pa.list_(pa.float32(), int(np.prod(shape)))


def _to_arrow(name: str, shape: list[int], out: dict, kind: str, batch: np.ndarray) -> pa.Array:
    if not isinstance(out, dict) or name not in out:
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise ValueError(f"compute must return a dict with column {name!r}; got {got}")
    t = out[name]
    if not torch.is_tensor(t) or not t.is_floating_point():
        raise TypeError(f"compute()[{name!r}] must be a floating-point tensor, got {t!r:.80}")
    want = (batch.size, *shape)
    if tuple(t.shape) != want:
        raise ValueError(f"compute()[{name!r}] has shape {tuple(t.shape)}, expected {want}")
    t = t.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        bad = ~torch.isfinite(t.reshape(batch.size, -1)).all(dim=1).numpy()
        raise ValueError(f"compute()[{name!r}] is NaN or Inf for ids {_show(kind, batch[bad])}")
    flat = pa.array(t.reshape(-1).numpy())
    return flat if not shape else pa.FixedSizeListArray.from_arrays(flat, int(np.prod(shape)))


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
        raw = f.read_bytes()
        fix = f"delete {f.name} and re-run the build to recompute it"
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
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    _fsync(tmp)
    os.replace(tmp, path / MANIFEST)
    _fsync(path)
    for f in path.glob("part-*.parquet.tmp"):  # leftovers of crashed runs; every rank is done
        f.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- reading


class ReferenceCache:
    """A complete reference cache, loaded into memory; look rows up by example id."""

    def __init__(self, meta: CacheMeta, ids: Ids, data: dict[str, torch.Tensor]):
        self.meta = meta
        self.id_kind, self._ids = _as_ids(ids)
        self._data = data
        key = _sort_key(self.id_kind, self._ids)
        self._order = np.argsort(key, kind="stable")
        self._sorted = key[self._order]
        dup = self._sorted[1:] == self._sorted[:-1]
        if bool(dup.any()):
            shown = _show(self.id_kind, self._ids[self._order][1:][dup])
            raise CacheError(f"cache holds duplicated ids {shown}")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        model_fingerprint: str | None = None,
        data_fingerprint: str | None = None,
    ) -> ReferenceCache:
        """Load the cache at `path`, refusing it if incomplete, damaged (a part's size, sha256
        or page checksums differ from what was written) or built from another model/data."""
        path = Path(path)
        if not (path / MANIFEST).exists():
            if path.is_dir() and any(path.glob("part-*.parquet*")):
                raise CacheError(
                    "incomplete cache: build was interrupted; re-run to resume "
                    f"(`jestkit reference`, or build_cache + finalize): {path} has parts but "
                    f"no {MANIFEST}"
                )
            raise CacheError(f"no reference cache at {path}; build it with `jestkit reference`")
        manifest = _read_manifest(path)
        meta = CacheMeta.from_dict(manifest["meta"])
        for what, want, have in [
            ("model", model_fingerprint, meta.model_fingerprint),
            ("data", data_fingerprint, meta.data_fingerprint),
        ]:
            if want is not None and want != have:
                raise CacheError(
                    f"stale reference cache at {path}: its {what} fingerprint {have[:12]}... "
                    f"differs from the expected {want[:12]}... (built from "
                    f"{'another reference model' if what == 'model' else 'other data'}); {_FIX}"
                )

        kind = manifest["id_kind"]
        ids, data = [], {c: [] for c in meta.columns}
        for k, p in enumerate(manifest["parts"]):
            f = path / p["file"]
            corrupt = f"reference cache {path} is damaged: {p['file']}"
            try:
                raw = f.read_bytes()
            except OSError as e:
                raise CacheError(f"{corrupt} cannot be read ({e}); {_FIX}") from e
            if len(raw) != p["bytes"]:
                raise CacheError(
                    f"{corrupt} has {len(raw)} bytes, the manifest says {p['bytes']} "
                    f"(truncated or replaced); {_FIX}"
                )
            if hashlib.sha256(raw).hexdigest() != p["sha256"]:
                raise CacheError(
                    f"{corrupt} does not match its sha256 in {MANIFEST} (changed on disk, or "
                    f"replaced by another file); {_FIX}"
                )
            table = _read_part_table(raw, f, kind, meta, _FIX)
            info = _part_info(table.schema, f)
            if info.get("part") != k or table.num_rows != p["rows"]:
                raise CacheError(
                    f"{corrupt} holds part {info.get('part')} with {table.num_rows} rows; the "
                    f"manifest expects part {k} with {p['rows']} rows; {_FIX}"
                )
            ids.append(_ids_from_arrow(kind, table["id"]))
            for c, shape in meta.columns.items():
                col = table[c].combine_chunks()
                values = col if not shape else col.flatten()
                data[c].append(values.to_numpy().reshape(-1, *shape))
        ids = np.concatenate(ids)
        if ids.size != manifest["num_rows"]:
            raise CacheError(
                f"cache {path} is corrupt: {ids.size} rows, manifest says "
                f"{manifest['num_rows']}; {_FIX}"
            )
        data = {c: torch.from_numpy(np.concatenate(v).astype(np.float32)) for c, v in data.items()}
        return cls(meta, ids, data)

    def __len__(self) -> int:
        return self._ids.size

    def ids(self) -> Ids:
        """Every id in the cache, in the order the cache was built: an int64 tensor, a list of
        str or a UID_DTYPE array, by id kind."""
        return _to_user(self.id_kind, self._ids)

    def lookup(self, ids: Ids, columns: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """{column: float32 tensor (*ids.shape, *shape)}, rows in the order of `ids`.

        ids: of the cache's kind: an integer tensor (any shape) or list of ints; a list/array of
        str; a UID_DTYPE array or a list of 32-digit hex strings. Repeats are fine; ids not in
        the cache raise KeyError naming them."""
        columns = list(self.meta.columns) if columns is None else list(columns)
        unknown = [c for c in columns if c not in self._data]
        if unknown:
            raise KeyError(f"unknown cache column(s) {unknown}; the cache has {list(self._data)}")
        if self.id_kind == "int64":
            q = torch.as_tensor(ids)
            if q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
                raise TypeError(f"ids must be an integer tensor, got dtype {q.dtype}")
            shape, device = tuple(q.shape), q.device
            flat = q.reshape(-1).to("cpu", torch.int64).numpy()
        else:
            flat = _sort_key(self.id_kind, _query_ids(ids, self.id_kind))
            shape, device = (flat.size,), torch.device("cpu")
        pos = np.searchsorted(self._sorted, flat).clip(max=len(self) - 1)
        found = self._sorted[pos] == flat
        if not bool(found.all()):
            missing = np.unique(flat[~found])
            raise KeyError(
                f"{missing.size} id(s) not in the reference cache, e.g. "
                f"{_show(self.id_kind, missing)}; was the cache built for other data? "
                "rebuild it with `jestkit reference`"
            )
        rows = torch.from_numpy(self._order[pos])
        return {
            c: self._data[c][rows].reshape(*shape, *self.meta.columns[c]).to(device)
            for c in columns
        }


# ----------------------------------------------------------------------------- helpers


def _part_path(path: Path, k: int) -> Path:
    return path / f"part-{k:05d}.parquet"


def _tmp_path(final: Path) -> Path:
    return final.with_name(final.name + ".tmp")


def _part_files(path: Path) -> list[Path]:
    return sorted(path.glob("part-*.parquet"))


def _part_info(schema: pa.Schema, f: Path) -> dict:
    raw = (schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise CacheError(
            f"{f} is not a jestkit cache part (no {_META_KEY.decode()} metadata); "
            "delete it or use another folder"
        )
    try:
        info = json.loads(raw)
        _ = info["meta"], info["part"], info["rows_per_part"], info["num_parts"], info["rows"]
        return info
    except (ValueError, KeyError, TypeError) as e:
        raise CacheError(f"{f} has unreadable jestkit metadata ({e}); delete it and re-run") from e


def _read_part_info(f: Path) -> dict:
    try:
        schema = pq.read_schema(f)
    except (OSError, pa.ArrowException) as e:
        raise CacheError(f"cannot read cache part {f} ({e}); delete it and re-run") from e
    return _part_info(schema, f)


def _read_part_table(raw: bytes, f: Path, kind: str, meta: CacheMeta, fix: str) -> pa.Table:
    """A part's table from its bytes, every page's checksum verified, its meta and kind checked."""
    try:
        table = pq.read_table(pa.BufferReader(raw), page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        raise CacheError(f"cache part {f} is damaged ({e}); {fix}") from e
    info = _part_info(table.schema, f)
    _check_meta(info["meta"], meta, where=str(f), building=False)
    want = [pa.field("id", _ID_TYPES[kind])] + [
        pa.field(c, _arrow_type(s)) for c, s in meta.columns.items()
    ]
    if info.get("id_kind", "int64") != kind or list(table.schema) != want:
        raise CacheError(
            f"cache part {f} holds {info.get('id_kind')} ids and columns {table.schema.names}, "
            f"expected {kind} ids and {['id', *meta.columns]}; {fix}"
        )
    return table


def _read_manifest(path: Path) -> dict:
    f = path / MANIFEST
    try:
        manifest = json.loads(f.read_text())
        fmt = manifest["meta"]["format_version"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheError(
            f"cannot read {f}: truncated or not a jestkit manifest ({e}); {_FIX}"
        ) from e
    if fmt != FORMAT_VERSION:
        raise CacheError(
            f"cache {path} has format version {fmt}, this jestkit reads only {FORMAT_VERSION} "
            "(version 2 added per-part checksums and string/uid ids); delete the folder and "
            "build it again (`jestkit reference`)"
        )
    try:
        CacheMeta.from_dict(manifest["meta"])
        if manifest["id_kind"] not in ID_KINDS:
            raise ValueError(f"unknown id kind {manifest['id_kind']!r}")
        int(manifest["num_rows"])
        for p in manifest["parts"]:
            if not (isinstance(p["file"], str) and "/" not in p["file"] and p["file"]):
                raise ValueError(f"bad part file name {p['file']!r}")
            int(p["rows"]), int(p["bytes"]), str(p["sha256"])
        return manifest
    except (ValueError, KeyError, TypeError) as e:
        raise CacheError(f"cannot read {f}: a field is missing or wrong ({e}); {_FIX}") from e


def _check_meta(found: dict, expected: CacheMeta, where: str, building: bool) -> None:
    """Raise CacheError saying which part of the meta differs, and how to fix it."""
    found = CacheMeta.from_dict(found)
    diffs = [
        f"{name} {a!r:.60} != expected {b!r:.60}"
        for name, a, b in [
            ("model fingerprint", found.model_fingerprint, expected.model_fingerprint),
            ("data fingerprint", found.data_fingerprint, expected.data_fingerprint),
            ("columns", found.columns, expected.columns),
            ("format version", found.format_version, expected.format_version),
        ]
        if a != b
    ]
    if diffs:
        fix = (
            "refusing to mix parts of different builds; delete the folder or build elsewhere"
            if building
            else _FIX
        )
        raise CacheError(f"{where} was built with another meta: {'; '.join(diffs)}; {fix}")


def _check_layout(info: dict, f: Path, ids_fp: str, rows_per_part: int, num_parts: int) -> None:
    if f.name != _part_path(f.parent, info["part"]).name:
        raise CacheError(
            f"{f} holds part {info['part']} of its build (renamed?); delete it and re-run"
        )
    if info.get("ids_fingerprint") != ids_fp:
        raise CacheError(
            f"{f} was built for another id list under the same data fingerprint (make the data "
            "fingerprint cover the ids, e.g. fingerprint_ids(ids, ...)); delete the folder"
        )
    if info["rows_per_part"] != rows_per_part or info["num_parts"] != num_parts:
        raise CacheError(
            f"{f} was built with rows_per_part={info['rows_per_part']}, this build uses "
            f"{rows_per_part}; re-run with rows_per_part={info['rows_per_part']} to resume, "
            "or delete the folder"
        )


def _check_unique(kind: str, arr: np.ndarray, name: str) -> None:
    key = _sort_key(kind, arr)
    order = np.argsort(key, kind="stable")
    s = key[order]
    dup = s[1:] == s[:-1]
    if bool(dup.any()):
        shown = _show(kind, np.unique(arr[order][1:][dup]))
        raise ValueError(f"{name} has duplicated ids, e.g. {shown}")


def _fsync(p: Path) -> None:
    """Flush a file (or a folder's entries) to disk so a rename survives a power loss."""
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
