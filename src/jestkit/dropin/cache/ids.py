"""Example ids of the three kinds a cache takes (int64, str, 128-bit DataComp uids): checking,
sorting and showing them, and their Arrow columns."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

ID_KINDS = ("int64", "str", "uid128")


UID_DTYPE = np.dtype("u8,u8")  # DataComp's uid: (int(uid[:16], 16), int(uid[16:32], 16))


_UID_BE = np.dtype([("hi", ">u8"), ("lo", ">u8")])  # its 16 bytes as stored in Parquet


_HEX32 = re.compile(r"[0-9a-fA-F]{32}")


Ids = Any  # a torch integer tensor, a list of str, or a UID_DTYPE numpy array (see above)


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


def _query_int_array(ids: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """Lookup ids of an int64 cache given as a list (nested: of any shape), a numpy array or a
    scalar: (the flat int64 ids, their shape), checked as _as_ids checks ids."""
    try:
        arr = np.asarray(ids)
    except ValueError as e:  # numpy refuses ragged nested lists
        raise ValueError(f"ids must be integers of one shape, got a ragged list: {e}") from e
    return _query_ids(arr.reshape(-1), "int64"), arr.shape


def _show(kind: str, arr: np.ndarray, n: int = 10) -> list:
    """A few ids as readable values (uids as hex) for error messages."""
    arr = arr[:n]
    return format_uids(arr) if kind == "uid128" else arr.tolist()


def _short(v: Any) -> str:
    return repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."


def _sort_key(kind: str, arr: np.ndarray) -> np.ndarray:
    """An array that numpy sorts and searches: str as fixed-width unicode, the rest as is."""
    return arr.astype(str) if kind == "str" else arr


def _check_unique(kind: str, arr: np.ndarray, name: str) -> None:
    key = _sort_key(kind, arr)
    order = np.argsort(key, kind="stable")
    s = key[order]
    dup = s[1:] == s[:-1]
    if bool(dup.any()):
        shown = _show(kind, np.unique(arr[order][1:][dup]))
        raise ValueError(f"{name} has duplicated ids, e.g. {shown}")


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


def _uid_bytes(arr: np.ndarray) -> bytes:
    be = np.empty(arr.size, _UID_BE)
    be["hi"], be["lo"] = arr["f0"], arr["f1"]
    return be.tobytes()
