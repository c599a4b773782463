"""Fingerprints of what a cache was built from: the reference's weights, the example ids."""

from __future__ import annotations

import hashlib
import json

import torch

from jestkit.dropin.cache.ids import Ids, _as_ids, _uid_bytes


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
