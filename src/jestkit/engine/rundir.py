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
  an old model with a new cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".jestkit.lock"
RUN_FILES = ("checkpoint.pt", "result.json")


class RunDirError(ValueError):
    """An output folder that this run must not or cannot use; the message says what to do."""


def _check_folder(out: Path) -> None:
    """OUT is a folder or can be one; refuses a file (or a file on its path)."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise RunDirError(f"{p} is not a folder; choose another --out")
            return


def check_run_dir(out: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse, before any work, an OUT this learner run may not use (see the module's rules).
    Reads only; run_lock then creates the folder and proves it writable."""
    out = Path(out)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; choose one")
    _check_folder(out)
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
    """Delete a learner run's checkpoint and results (what --overwrite replaces)."""
    out = Path(out)
    for name in RUN_FILES:
        for path in (out / name, out / (name + ".tmp")):
            path.unlink(missing_ok=True)


def check_reference_dir(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse, before any work, a reference OUT that is a file or holds a finished reference
    (unless overwrite)."""
    out = Path(out)
    _check_folder(out)
    _check_folder(partial_dir(out))
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
    """Replace `out` by the complete `partial` folder. The old folder is moved aside (to
    OUT.old) first and deleted only once the new one is in place."""
    if not out.exists():
        os.rename(partial, out)
        return
    aside = out.with_name(out.name + ".old")
    if aside.exists():
        shutil.rmtree(aside)
    os.rename(out, aside)
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
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
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
    write_config=None,
) -> Iterator[Path]:
    """A learner run's folder for the `with` block: checked, locked (on the main rank), its old
    run deleted when `overwrite`, and the config written through write_config(OUT)."""
    out = Path(out)
    check_run_dir(out, resume, overwrite)
    with run_lock(out) if is_main else contextlib.nullcontext():
        if is_main:
            check_run_dir(out, resume, overwrite)  # again: another run may have ended meanwhile
            if overwrite:
                clear_run(out)
            if write_config is not None:
                write_config(out)
        yield out
