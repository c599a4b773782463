"""The cache's on-disk format: its metadata (CacheMeta), the Parquet parts and the manifest,
and the checks that refuse a damaged or foreign part (CacheError)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from jestkit.dropin.cache.ids import _ID_TYPES, ID_KINDS, _show
from jestkit.engine.files import RecordError, open_regular, read_regular, read_text

FORMAT_VERSION = 2  # 2: per-part sha256 in the manifest, page checksums, string and uid ids


MANIFEST = "manifest.json"


_META_KEY = b"jestkit.cache"


MAX_PART_BYTES = 2**36  # a part holds rows_per_part rows: far below this


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
        with open_regular(f) as (file, _):
            schema = pq.read_schema(file)
    except RecordError as e:
        raise CacheError(f"cache part {e}; delete it and re-run") from None
    except (OSError, pa.ArrowException) as e:
        raise CacheError(f"cannot read cache part {f} ({e}); delete it and re-run") from e
    return _part_info(schema, f)


def _read_part_bytes(f: Path, size: int | None, fix: str) -> bytes:
    """A part's bytes, from a regular file only (never a symlink, a FIFO or a device): exactly
    `size` of them (the manifest's), or, while the manifest is written, the file's own size."""
    try:
        return read_regular(f, size=size, max_bytes=MAX_PART_BYTES)
    except RecordError as e:
        raise CacheError(f"cache part {e}; {fix}") from None


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
        manifest = json.loads(read_text(f))
        fmt = manifest["meta"]["format_version"]
    except RecordError as e:
        raise CacheError(f"{e}; {_FIX}") from None
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
