"""DataComp subsets: a sorted .npy of 128-bit uids (dtype u8,u8), what its resharder reads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jestkit.dropin.cache.ids import UID_DTYPE, _as_ids, _check_unique, _is_uid_dtype, parse_uids
from jestkit.engine.files import atomic_file


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
    with atomic_file(path) as f:
        np.save(f, np.sort(arr))
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
