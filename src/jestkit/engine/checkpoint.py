"""Checkpoints (torch.save), written atomically, and the checks that read them back.

Every writer goes through a temporary file and a rename (jestkit.engine.files), so a crash
never leaves half a file.
Checkpoints hold plain types only (tensors, dicts, lists, numbers, strings; generator states as
uint8 tensors) and are read with torch.load(weights_only=True): a checkpoint is data, and a
file whose pickle would run code or build other objects is refused (`load_checkpoint`).
torch.load does not check its zip records' CRCs, so a checkpoint is the torch.save bytes of
the state plus their sha256 (`save_checkpoint`): a flipped byte is refused, never loaded.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
from pathlib import Path

import torch

from jestkit.engine.files import atomic_file, open_regular, write_bytes_atomic


def save_atomic(obj, path: Path) -> None:
    """torch.save to memory, then to PATH.tmp and renamed (jestkit.engine.files): a full disk
    is then an OSError naming the file (torch.save into the file raises a RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(buffer.getvalue(), path)


FORMAT = "jestkit checkpoint 1"


def save_checkpoint(state: dict, path: Path) -> None:
    """Write a training checkpoint atomically: {'format', 'sha256', 'payload'}, the payload the
    torch.save bytes of `state` (plain types only) as a uint8 tensor."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    raw = buffer.getvalue()
    payload = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    save_atomic({"format": FORMAT, "sha256": hashlib.sha256(raw).hexdigest(),
                 "payload": payload}, path)  # fmt: skip


NUMBERED_DIR = "checkpoints"


def save_numbered(checkpoint: Path, out: Path, step: int, keep: int | None = None) -> Path:
    """A numbered checkpoint, OUT/checkpoints/step_N.pt: a copy of the checkpoint file just
    written (resumable with --resume PATH; not serialised a second time), as open_clip_train
    keeps epoch_N.pt; then only the `keep` latest are kept (None: all)."""
    folder = out / NUMBERED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step}.pt"
    with open_regular(checkpoint) as (src, _), atomic_file(path) as dst:
        shutil.copyfileobj(src, dst)
    if keep is not None:
        for old in numbered_checkpoints(out)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def numbered_checkpoints(out: Path) -> list[Path]:
    """The numbered checkpoints of run folder `out`, oldest first."""
    folder = Path(out) / NUMBERED_DIR
    paths = [p for p in folder.glob("step_*.pt") if p.stem.removeprefix("step_").isdigit()]
    return sorted(paths, key=lambda p: int(p.stem.removeprefix("step_")))


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: damaged, or not a plain jestkit checkpoint."""


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at `path` (written by save_checkpoint), loaded so that no file can run
    code (weights_only=True) and checked against its sha256; a CheckpointError says what is
    wrong with any other file."""
    state = _load(path)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        payload = state.get("payload")
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
            raise CheckpointError(f"{path} is damaged (no payload); {_FIX}")
        raw = payload.numpy().tobytes()
        if hashlib.sha256(raw).hexdigest() != state.get("sha256"):
            raise CheckpointError(
                f"{path} is truncated or damaged (its content does not match its sha256); {_FIX}"
            )
        state = _load(path, io.BytesIO(raw))
    if not isinstance(state, dict) or "step" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a jestkit checkpoint (no step and config)")
    return state


_FIX = "delete it to start afresh (or pass --overwrite), or restore a good copy"


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is a checkpoint jestkit wrote (rather than, say, an open_clip one), read
    as data (weights_only=True); load it with load_checkpoint."""
    state = _load(path)
    return isinstance(state, dict) and state.get("format") == FORMAT


def _load(path: Path, source=None):
    try:
        return torch.load(source or path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "unpickling failed"
        raise CheckpointError(
            f"{path} is not a jestkit checkpoint: it holds objects other than tensors, numbers, "
            f"strings, lists and dicts ({reason}); it was not loaded, and nothing in it ran. "
            f"Delete it, or resume from a checkpoint jestkit wrote"
        ) from None
    except Exception as e:  # whatever a damaged file makes torch.load raise
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        raise CheckpointError(f"{path} is truncated or damaged ({reason}); {_FIX}") from None


def flat(config: dict, prefix: str = "", sep: str = ".") -> dict:
    """A nested dict as {'section.field': value} (sep '/': metrics' {'flops/train': ...})."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}{sep}", sep))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_same_config(saved: dict, mine: dict, may_differ: tuple[str, ...] = ()) -> None:
    """Refuse to resume a checkpoint written with other settings (but those in may_differ),
    naming the first setting that differs."""
    saved, mine = flat(saved), flat(mine)
    keys = list(mine) + [k for k in saved if k not in mine]
    differ = [k for k in keys if k not in may_differ and saved.get(k) != mine.get(k)]
    if differ:
        k = differ[0]
        raise ValueError(
            f"the checkpoint was written with {k}={saved.get(k)!r}, this run has "
            f"{k}={mine.get(k)!r}; resume with the same settings (a resumed run continues exactly "
            f"where it stopped, so none may change), or start another run in another --out"
        )
