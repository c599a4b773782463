"""The reference cache: the frozen reference model's outputs for every training example, by id.

The reference never changes, so its outputs (image and text embeddings for the contrastive
losses, a per-example loss otherwise) are computed once and read back during training. They are
stored as Parquet in one folder:

    path/
      part-00000.parquet     rows 0 .. rows_per_part-1 of `ids` (in the order given to build_cache)
      part-00001.parquet     the next rows_per_part ids, and so on
      manifest.json          written last, atomically: the cache is valid only when it exists

Each part has an int64 `id` column and one float32 column per output (a fixed-size list for
embeddings), and carries in its Parquet metadata the fingerprints it was built with, its index
and the fingerprint of the whole id list, so that parts of different builds are never mixed.

Building is resumable and its writes atomic: a part is written to `part-k.parquet.tmp` and
renamed with os.replace once complete, so an interrupted build leaves no half part; re-running
skips complete parts. Part k belongs to rank k % world_size; under torch.distributed every rank
calls build_cache with its rank, and rank 0 calls finalize after a barrier (with world_size 1,
build_cache finalizes itself). finalize checks that the union of the parts' ids is exactly `ids`
before it writes the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_META_KEY = b"jestkit.cache"
_FIX = "rebuild it with `jestkit reference` (or delete the folder and build again)"


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


def fingerprint_ids(ids: torch.Tensor, *extra: str) -> str:
    """sha256 hex over the id list, in order, and any extra strings (tokenizer, data config)."""
    ids = _check_ids(ids)
    h = hashlib.sha256(b"jestkit-ids-v1\n")
    h.update(f"{ids.numel()}\n".encode())
    h.update(ids.numpy().astype("<i8").tobytes())
    for s in extra:
        b = str(s).encode()
        h.update(f"\n{len(b)}\n".encode() + b)
    return h.hexdigest()


def _check_ids(ids: torch.Tensor) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"ids must be an integer tensor, got dtype {ids.dtype}")
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-d tensor, got shape {tuple(ids.shape)}")
    return ids.to("cpu", torch.int64).contiguous()


# ----------------------------------------------------------------------------- building


def build_cache(
    path: str | os.PathLike,
    ids: torch.Tensor,
    compute: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    meta: CacheMeta,
    batch_size: int = 1024,
    rank: int = 0,
    world_size: int = 1,
    rows_per_part: int = 8192,
    progress: bool = True,
) -> None:
    """Compute `compute(batch_ids)` for every id and store it under `path`; resumable.

    compute returns {column: tensor of shape (len(batch_ids), *meta.columns[column])}. Parts of
    rows_per_part consecutive ids; part k is computed by rank k % world_size. With world_size 1
    the manifest is written at the end; otherwise rank 0 calls finalize after a barrier.
    """
    path = Path(path)
    ids = _check_ids(ids)
    if ids.numel() == 0:
        raise ValueError("ids is empty; there is nothing to cache")
    _check_unique(ids, "ids")
    if batch_size < 1 or rows_per_part < 1:
        raise ValueError(
            f"batch_size and rows_per_part must be >= 1, got {batch_size}, {rows_per_part}"
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    path.mkdir(parents=True, exist_ok=True)

    n = ids.numel()
    num_parts = -(-n // rows_per_part)
    ids_fp = fingerprint_ids(ids)
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
        desc=f"reference cache {path.name}",
        unit="ex",
        disable=not progress or rank != 0,
    )
    with bar:
        for k in todo:
            part_ids = ids[k * rows_per_part : k * rows_per_part + rows(k)]
            info = {
                "meta": meta.to_dict(),
                "part": k,
                "num_parts": num_parts,
                "rows_per_part": rows_per_part,
                "rows": part_ids.numel(),
                "ids_fingerprint": ids_fp,
            }
            _write_part(path, k, part_ids, compute, meta, info, batch_size, bar)

    if world_size == 1:
        finalize(path, ids, meta)


def _write_part(path, k, part_ids, compute, meta, info, batch_size, bar) -> None:
    """Compute one part batch by batch into a temp file, then rename it into place."""
    schema = pa.schema(
        [pa.field("id", pa.int64())]
        + [pa.field(c, _arrow_type(s)) for c, s in meta.columns.items()],
        metadata={_META_KEY: json.dumps(info).encode()},
    )
    final = _part_path(path, k)
    tmp = _tmp_path(final)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, part_ids.numel(), batch_size):
                batch = part_ids[start : start + batch_size].clone()
                with torch.no_grad():
                    out = compute(batch)
                arrays = [pa.array(batch.numpy())]
                arrays += [_to_arrow(c, s, out, batch) for c, s in meta.columns.items()]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                bar.update(batch.numel())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a hard kill leaves it instead; the next run removes it
        raise
    _fsync(tmp)
    os.replace(tmp, final)
    _fsync(path)


def _arrow_type(shape: list[int]) -> pa.DataType:
    if not shape:
        return pa.float32()
    return pa.list_(pa.float32(), int(np.prod(shape)))


def _to_arrow(name: str, shape: list[int], out: dict, batch: torch.Tensor) -> pa.Array:
    if not isinstance(out, dict) or name not in out:
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise ValueError(f"compute must return a dict with column {name!r}; got {got}")
    t = out[name]
    if not torch.is_tensor(t) or not t.is_floating_point():
        raise TypeError(f"compute()[{name!r}] must be a floating-point tensor, got {t!r:.80}")
    want = (batch.numel(), *shape)
    if tuple(t.shape) != want:
        raise ValueError(f"compute()[{name!r}] has shape {tuple(t.shape)}, expected {want}")
    t = t.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        bad = batch[~torch.isfinite(t.reshape(len(batch), -1)).all(dim=1)]
        raise ValueError(f"compute()[{name!r}] is NaN or Inf for ids {bad[:10].tolist()}")
    flat = pa.array(t.reshape(-1).numpy())
    return flat if not shape else pa.FixedSizeListArray.from_arrays(flat, int(np.prod(shape)))


def finalize(path: str | os.PathLike, ids: torch.Tensor, meta: CacheMeta) -> None:
    """Check every part is present and holds exactly `ids`, then write the manifest atomically.

    Rank 0 calls this after a barrier once every rank's build_cache has returned.
    """
    path = Path(path)
    ids = _check_ids(ids)
    _check_unique(ids, "ids")
    ids_fp = fingerprint_ids(ids)
    files = _part_files(path)
    if not files:
        raise CacheError(f"no parts in {path}; run build_cache on every rank before finalize")

    infos = {}
    for f in files:
        info = _read_part_info(f)
        _check_meta(info["meta"], meta, where=str(f), building=True)
        rows_per_part = info["rows_per_part"]
        _check_layout(info, f, ids_fp, rows_per_part, -(-ids.numel() // rows_per_part))
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

    parts = [pq.read_table(infos[k][0], columns=["id"])["id"] for k in range(num_parts)]
    stored = torch.from_numpy(np.concatenate([p.to_numpy() for p in parts]))
    if not torch.equal(stored, ids):
        have, want = set(stored.tolist()), set(ids.tolist())
        raise CacheError(
            f"cache {path} does not hold exactly the given ids: {len(want - have)} missing "
            f"(e.g. {sorted(want - have)[:10]}), {len(have - want)} unexpected, "
            f"{stored.numel() - len(have)} duplicated; delete the folder and rebuild"
        )

    manifest = {
        "meta": meta.to_dict(),
        "num_rows": ids.numel(),
        "rows_per_part": infos[0][1]["rows_per_part"],
        "ids_fingerprint": ids_fp,
        "parts": [
            {"file": infos[k][0].name, "rows": infos[k][1]["rows"]} for k in range(num_parts)
        ],
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

    def __init__(self, meta: CacheMeta, ids: torch.Tensor, data: dict[str, torch.Tensor]):
        self.meta = meta
        self._ids = ids
        self._data = data
        self._sorted_ids, self._order = torch.sort(ids)
        dup = self._sorted_ids[1:] == self._sorted_ids[:-1]
        if bool(dup.any()):
            raise CacheError(
                f"cache holds duplicated ids {self._sorted_ids[1:][dup][:10].tolist()}"
            )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        model_fingerprint: str | None = None,
        data_fingerprint: str | None = None,
    ) -> ReferenceCache:
        """Load the cache at `path`, refusing it if incomplete or built from another model/data."""
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
        if meta.format_version != FORMAT_VERSION:
            raise CacheError(
                f"cache {path} has format version {meta.format_version}, this jestkit reads "
                f"{FORMAT_VERSION}; {_FIX}"
            )
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

        ids, data = [], {c: [] for c in meta.columns}
        for p in manifest["parts"]:
            f = path / p["file"]
            if not f.exists():
                raise CacheError(f"cache {path} is corrupt: part {f.name} is missing; {_FIX}")
            table = pq.read_table(f)
            _check_meta(_part_info(table.schema, f)["meta"], meta, where=str(f), building=False)
            if table.num_rows != p["rows"]:
                raise CacheError(
                    f"cache {path} is corrupt: {f.name} has {table.num_rows} rows, "
                    f"manifest says {p['rows']}; {_FIX}"
                )
            ids.append(table["id"].to_numpy())
            for c, shape in meta.columns.items():
                col = table[c].combine_chunks()
                values = col if not shape else col.flatten()
                data[c].append(values.to_numpy().reshape(-1, *shape))
        ids = torch.from_numpy(np.concatenate(ids))
        if ids.numel() != manifest["num_rows"]:
            raise CacheError(
                f"cache {path} is corrupt: {ids.numel()} rows, manifest says "
                f"{manifest['num_rows']}; {_FIX}"
            )
        data = {c: torch.from_numpy(np.concatenate(v).astype(np.float32)) for c, v in data.items()}
        return cls(meta, ids, data)

    def __len__(self) -> int:
        return self._ids.numel()

    def ids(self) -> torch.Tensor:
        """Every id in the cache, in the order the cache was built."""
        return self._ids.clone()

    def lookup(
        self, ids: torch.Tensor, columns: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """{column: float32 tensor (*ids.shape, *shape)}, rows in the order of `ids`."""
        columns = list(self.meta.columns) if columns is None else list(columns)
        unknown = [c for c in columns if c not in self._data]
        if unknown:
            raise KeyError(f"unknown cache column(s) {unknown}; the cache has {list(self._data)}")
        q = torch.as_tensor(ids)
        if q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
            raise TypeError(f"ids must be an integer tensor, got dtype {q.dtype}")
        flat = q.reshape(-1).to("cpu", torch.int64)
        pos = torch.searchsorted(self._sorted_ids, flat).clamp_(max=len(self) - 1)
        found = self._sorted_ids[pos] == flat
        if not bool(found.all()):
            missing = flat[~found].unique()
            raise KeyError(
                f"{missing.numel()} id(s) not in the reference cache, e.g. "
                f"{missing[:10].tolist()}; was the cache built for other data? "
                "rebuild it with `jestkit reference`"
            )
        rows = self._order[pos]
        return {
            c: self._data[c][rows].reshape(*q.shape, *self.meta.columns[c]).to(q.device)
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
    return json.loads(raw)


def _read_part_info(f: Path) -> dict:
    try:
        schema = pq.read_schema(f)
    except (OSError, pa.ArrowException) as e:
        raise CacheError(f"cannot read cache part {f} ({e}); delete it and re-run") from e
    return _part_info(schema, f)


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        CacheMeta.from_dict(manifest["meta"])
        _ = manifest["parts"], manifest["num_rows"]
        return manifest
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheError(f"cannot read {path / MANIFEST} ({e}); {_FIX}") from e


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
    if info["ids_fingerprint"] != ids_fp:
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


def _check_unique(ids: torch.Tensor, name: str) -> None:
    s = torch.sort(ids).values
    dup = s[1:] == s[:-1]
    if bool(dup.any()):
        raise ValueError(f"{name} has duplicated ids, e.g. {s[1:][dup].unique()[:10].tolist()}")


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
