"""Reading a cache back: ReferenceCache.open checks it whole, lookup returns rows by id."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from jestkit.dropin.cache.format import (
    _FIX,
    MANIFEST,
    CacheError,
    CacheMeta,
    _part_info,
    _read_manifest,
    _read_part_bytes,
    _read_part_table,
)
from jestkit.dropin.cache.ids import (
    Ids,
    _as_ids,
    _ids_from_arrow,
    _query_ids,
    _query_int_array,
    _show,
    _sort_key,
    _to_user,
)


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
            raw = _read_part_bytes(f, p["bytes"], _FIX)
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
        if isinstance(columns, str):
            raise TypeError(f"columns must be a list of column names, e.g. [{columns!r}]")
        columns = list(self.meta.columns) if columns is None else list(columns)
        unknown = [c for c in columns if c not in self._data]
        if unknown:
            raise KeyError(f"unknown cache column(s) {unknown}; the cache has {list(self._data)}")
        if self.id_kind == "int64" and torch.is_tensor(ids):
            q = ids
            if q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
                raise TypeError(f"ids must be an integer tensor, got dtype {q.dtype}")
            shape, device = tuple(q.shape), q.device
            flat = q.reshape(-1).to("cpu", torch.int64).numpy()
        elif self.id_kind == "int64":  # lists (nested), numpy arrays, scalars
            (flat, shape), device = _query_int_array(ids), torch.device("cpu")
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
