"""Run folders: checked before any work, locked for a run's lifetime, never silently reused.

A learner's run folder (`jestkit train --out`) holds config.yaml, checkpoint.pt and, once the
run is done, result.json. A reference folder (`jestkit reference --out`) holds model.pt,
reference.json and cache/. The rules, the same for the CLI and the Python functions:

* OUT must be a folder, or not exist yet, and be writable: checked (by writing the lock file)
  before the data is even read, so an unusable OUT costs nothing.
* One run at a time per folder: the lock (an flock on OUT/.jestkit.lock, released by the
  kernel when the process dies, even by kill -9) refuses a second run at once.
* A folder holding a run (checkpoint.pt or result.json) is refused, unless `resume` (continue
  it: jestkit.engine.loop.Trainer.resume refuses other settings) or `overwrite` (delete that
  run's checkpoint and results, then start afresh). `resume` without a checkpoint is refused.
* A finished reference (reference.json) is refused unless `overwrite`; the new one is built in
  OUT.partial beside it and swapped in whole at the end (`swap_in`), so the folder never mixes
  an old model with a new cache. Only a reference is ever replaced: an OUT (or OUT.partial)
  holding anything a reference folder does not (a train run, a folder of runs, your files) is
  refused, overwrite or not. A learner run is never written into a reference folder.
* Nothing is written through a symlink: a symlink among a folder's entries is refused, the lock
  is opened with O_NOFOLLOW, and every record is written to a temporary file and renamed
  (jestkit.engine.checkpoint.write_bytes_atomic).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".jestkit.lock"
RUN_FILES = ("checkpoint.pt", "result.json", "metrics.jsonl")
# what else a run writes as it goes, deleted with it by --overwrite: numbered checkpoints, the
# open_clip export, TensorBoard's and W&B's files (jestkit.engine.reports)
RUN_EXTRAS = ("checkpoints", "open_clip_model.pt", "open_clip_model.json", "tensorboard",
              "wandb", "curves.png")
# what a reference folder (jestkit reference, jestkit score) may hold; temporary files included
REFERENCE_FILES = ("model.pt", "reference.json", "config.yaml", "building.json")
REFERENCE_NAMES = frozenset(
    [LOCK_NAME, "cache", *REFERENCE_FILES, *(name + ".tmp" for name in REFERENCE_FILES)]
)
# what a `jestkit score` folder may hold: a reference folder without a model
SCORE_NAMES = REFERENCE_NAMES - {"model.pt", "model.pt.tmp", "building.json", "building.json.tmp"}


class RunDirError(ValueError):
    """An output folder that this run must not or cannot use; the message says what to do."""


def _check_folder(out: Path) -> None:
    """OUT is a folder or can be one; refuses a file (or a file on its path)."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise RunDirError(f"{p} is not a folder; choose another --out")
            return


def _entries(folder: Path) -> list[str]:
    """The names in `folder` (none if it does not exist); a symlink among them is refused."""
    if not folder.is_dir():
        return []
    names = sorted(os.listdir(folder))
    links = [name for name in names if (folder / name).is_symlink()]
    if links:
        raise RunDirError(
            f"{folder / links[0]} is a symlink; jestkit writes only regular files in its folders "
            f"and never through a link: remove it, or choose another --out"
        )
    return names


def check_run_dir(out: str | os.PathLike, resume: bool | str | None = False,
                  overwrite: bool = False) -> None:  # fmt: skip
    """Refuse, before any work, an OUT this learner run may not use (see the module's rules).
    resume: True or 'latest' (OUT/checkpoint.pt), or a checkpoint file of this run (a numbered
    OUT/checkpoints/step_N.pt). Reads only; run_lock then creates the folder and proves it
    writable."""
    out = Path(out)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; choose one")
    if resume not in (None, False, True, "latest"):
        path = Path(resume)
        if not path.is_file():
            raise RunDirError(f"--resume {path}: no such checkpoint file (give `latest`, or one "
                              f"of {out / 'checkpoints'}/step_N.pt)")  # fmt: skip
        if path.resolve().parent not in (out.resolve(), (out / "checkpoints").resolve()):
            raise RunDirError(
                f"--resume {path} is not a checkpoint of the run in {out} (its checkpoint.pt or "
                f"checkpoints/step_N.pt): a run continues in its own folder"
            )
    _check_folder(out)
    names = _entries(out)
    theirs = [name for name in ("reference.json", "model.pt", "cache") if name in names]
    if theirs:
        raise RunDirError(
            f"{out} holds a reference ({', '.join(theirs)}), not a train run; a train run never "
            f"writes into another command's folder: choose another --out"
        )
    has_checkpoint = (out / "checkpoint.pt").exists()
    if resume and not has_checkpoint:
        raise RunDirError(
            f"--resume: there is no checkpoint at {out / 'checkpoint.pt'}; run without "
            f"--resume to start afresh"
        )
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not resume and not overwrite:
        raise RunDirError(
            f"{out} already holds a run ({', '.join(found)}); pass --resume to continue "
            f"it, --overwrite to replace it, or choose another --out"
        )


def clear_run(out: str | os.PathLike) -> None:
    """Delete a learner run's checkpoints, metrics and results (what --overwrite replaces)."""
    out = Path(out)
    for name in RUN_FILES + RUN_EXTRAS:
        for path in (out / name, out / (name + ".tmp")):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def _check_reference_names(folder: Path, what: str) -> list[str]:
    """The entries of `folder`, refusing any that a reference folder does not hold."""
    names = _entries(folder)
    foreign = [name for name in names if name not in REFERENCE_NAMES]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise RunDirError(
            f"{folder} holds {shown}: it is not a reference folder, and {what} only ever "
            f"replaces a reference (model.pt, reference.json, cache/); choose another --out"
        )
    return names


def check_score_dir(out: str | os.PathLike) -> None:
    """Refuse, before any work, a `jestkit score` OUT that is a file or holds anything but a
    score's reference.json, cache/ and config.yaml (a train run, a `jestkit reference` folder,
    your files): the scores are never written into another command's folder."""
    out = Path(out)
    _check_folder(out)
    foreign = [name for name in _entries(out) if name not in SCORE_NAMES]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise RunDirError(
            f"{out} holds {shown}: it is not a `jestkit score` folder (reference.json, cache/, "
            f"config.yaml), and the scores are never written into another command's folder; "
            f"choose another --out"
        )


def check_reference_dir(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse, before any work, a reference OUT that is a file, holds a finished reference
    (unless overwrite) or holds anything else (a train run, your files: always), and an
    OUT.partial beside it that holds anything but a reference being built."""
    out = Path(out)
    _check_folder(out)
    _check_folder(partial_dir(out))
    names = _check_reference_names(out, "`jestkit reference`")
    if names and "reference.json" not in names and set(names) != {LOCK_NAME}:
        raise RunDirError(
            f"{out} holds {', '.join(names)} but no reference.json: it is not a finished "
            f"reference, and `jestkit reference` only ever replaces one; choose another --out"
        )
    _check_reference_names(partial_dir(out), "`jestkit reference`")
    if (out / "reference.json").exists() and not overwrite:
        raise RunDirError(
            f"{out} already holds a reference (reference.json); pass --overwrite to replace "
            f"it (the new one is built beside it and swapped in when complete), or choose "
            f"another --out"
        )


def partial_dir(out: str | os.PathLike) -> Path:
    """Where a reference for `out` is built before it is swapped in: OUT.partial, beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def swap_in(partial: Path, out: Path) -> None:
    """Replace `out` (a reference folder, checked again here) by the complete `partial` folder.
    The old folder is moved aside to a fresh OUT.old-XXXX (never a name that exists) first and
    deleted only once the new one is in place."""
    if not out.exists():
        os.rename(partial, out)
        return
    check_reference_dir(out, overwrite=True)
    aside = Path(tempfile.mkdtemp(prefix=out.name + ".old-", dir=out.parent))
    os.rename(out, aside)  # onto the fresh, empty folder
    os.rename(partial, out)
    shutil.rmtree(aside)


@contextlib.contextmanager
def run_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Create OUT if needed and hold its lock for the `with` block; a RunDirError if another
    process holds it, or if OUT cannot be created or written."""
    out = Path(out)
    _check_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunDirError(
                f"{out / LOCK_NAME} is a symlink; jestkit never writes through a link: remove "
                f"it, or choose another --out"
            ) from None
        raise RunDirError(f"cannot write to {out} ({e.strerror}); choose another --out") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunDirError(
                f"another jestkit run (pid {holder}) is using {out}; wait for it or choose "
                f"another --out"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            raise RunDirError(f"cannot write to {out} ({e.strerror}); choose another --out") from e
        yield out
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def claimed_run(
    out: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    is_main: bool = True,
) -> Iterator[Path]:
    """A learner run's folder for the `with` block: checked, locked (on the main rank), and its
    old run deleted when `overwrite`. The config is written later, once every check passed
    (jestkit.engine.record.run_and_record)."""
    out = Path(out)
    check_run_dir(out, resume, overwrite)
    with run_lock(out) if is_main else contextlib.nullcontext():
        if is_main:
            check_run_dir(out, resume, overwrite)  # again: another run may have ended meanwhile
            if overwrite:
                clear_run(out)
        yield out
