"""Files a run writes, atomically: checkpoints (torch.save) and JSON results.

Every writer goes through a temporary file and a rename, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json_atomic(obj, path: Path) -> None:
    """JSON to a temporary file, then rename, creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def flat(config: dict, prefix: str = "") -> dict:
    """A nested config dict as {'section.field': value}."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_same_config(saved: dict, mine: dict, may_differ: tuple[str, ...]) -> None:
    """Refuse to resume a checkpoint written with other settings (but those in may_differ)."""
    saved, mine = flat(saved), flat(mine)
    differ = [k for k in mine if k not in may_differ and saved.get(k) != mine[k]]
    if differ:
        k = differ[0]
        raise ValueError(
            f"the checkpoint was written with {k}={saved.get(k)!r}, this run has "
            f"{k}={mine[k]!r}; resume with the same config or use another --out"
        )
