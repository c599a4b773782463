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
* Nothing is written through a symlink: a symlink among the names a command writes is refused
  (any other entry of OUT makes a reference, score or demo folder foreign anyway), the lock is
  opened with O_NOFOLLOW, and every file is written to a temporary file opened with
  O_EXCL|O_NOFOLLOW and renamed (jestkit.engine.files.atomic_file), the cache's parts and
  manifest included.
* Every command keeps to its own folders: a train run never writes into a reference, a score
  folder or a demo; a demo only into a folder holding a demo; nothing is written inside a
  reference or its cache (a folder holding reference.json or manifest.json), nor into the file
  system's root. A config.yaml that the same command did not write is refused
  (jestkit.cli checks it: the command knows its settings).
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
# what a run wrote beside its checkpoint and results, and --overwrite removes with them: its
# curves, a `jestkit eval` of its checkpoint (and its clip_benchmark result files), numbered
# checkpoints, the open_clip export, TensorBoard's and W&B's files (jestkit.engine.reports)
RUN_EXTRAS = ("curves.png", "eval.json", "clip_benchmark", "checkpoints", "open_clip_model.pt",
              "open_clip_model.json", "tensorboard", "wandb")
# the names a train run writes (or holds): a symlink among them is refused
RUN_NAMES = frozenset(
    [LOCK_NAME, "config.yaml", *RUN_FILES, *RUN_EXTRAS]
    + [name + ".tmp" for name in ("config.yaml", *RUN_FILES, *RUN_EXTRAS)]
)
# what a demo folder holds: its config, results and curves, the reference and the runs
DEMO_FILES = ("config.yaml", "results.json", "curves.png")
DEMO_NAMES = frozenset(
    [LOCK_NAME, "reference", "reference.partial", "runs", *DEMO_FILES]
    + [name + ".tmp" for name in DEMO_FILES]
)
# records that mark a folder as a reference (reference.json) or a cache (manifest.json): no
# other command's output is ever written inside one
RECORD_MARKS = ("reference.json", "manifest.json")
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
    """OUT is a folder or can be one, not the file system's root, and not inside a reference or
    its cache; refuses a file (or a file on its path)."""
    resolved = out.resolve()
    if resolved == Path(resolved.anchor):
        raise RunDirError(f"--out {out} is the file system's root; choose a folder for the output")
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise RunDirError(f"{p} is not a folder; choose another --out")
            break
    for p in resolved.parents:
        marks = [name for name in RECORD_MARKS if (p / name).exists()]
        if marks:
            raise RunDirError(
                f"{out} is inside {p}, which holds {marks[0]} (a reference or its cache); "
                f"nothing is ever written into another command's folder: choose another --out"
            )


def _entries(folder: Path, ours=None) -> list[str]:
    """The names in `folder` (none if it does not exist); a symlink among them (among `ours`,
    the names this command writes, when given) is refused."""
    if not folder.is_dir():
        return []
    names = sorted(os.listdir(folder))
    links = [name for name in names if (folder / name).is_symlink()
             and (ours is None or name in ours)]  # fmt: skip
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
    names = _entries(out, RUN_NAMES)
    theirs = [name for name in ("reference.json", "model.pt", "cache", "manifest.json")
              if name in names]  # fmt: skip
    if theirs:
        raise RunDirError(
            f"{out} holds a reference ({', '.join(theirs)}), not a train run; a train run never "
            f"writes into another command's folder: choose another --out"
        )
    demo = [name for name in ("results.json", "runs", "reference") if name in names]
    if "results.json" in demo and len(demo) > 1:  # (a demo's config.yaml: refused by the CLI)
        raise RunDirError(
            f"{out} holds {', '.join(demo)}: it is a demo's folder, not a train run; a train "
            f"run never writes into another command's folder: choose another --out"
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
    """Delete a learner run's checkpoints, metrics and results, and what was drawn, evaluated or
    exported from them (RUN_EXTRAS): what --overwrite replaces."""
    out = Path(out)
    for name in (*RUN_FILES, *RUN_EXTRAS):
        for path in (out / name, out / (name + ".tmp")):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def check_demo_dir(out: str | os.PathLike) -> None:
    """Refuse, before any work, a demo OUT that is a file or holds anything but a demo's
    config.yaml, results.json, curves.png, reference/ and runs/ (a train run, a reference,
    your files): the demo never writes into another command's folder. Its reference and runs
    are checked by check_reference_dir and check_run_dir."""
    out = Path(out)
    _check_folder(out)
    _only(out, DEMO_NAMES, "it is not a demo's folder (config.yaml, results.json, curves.png, "
          "reference/, runs/), and the demo never writes into another command's folder; choose "
          "another --out")  # fmt: skip


def clear_demo(out: str | os.PathLike) -> None:
    """Delete a demo's results and curves (what --overwrite replaces with the new demo's)."""
    out = Path(out)
    for name in ("results.json", "curves.png"):
        for path in (out / name, out / (name + ".tmp")):
            path.unlink(missing_ok=True)


def _only(folder: Path, allowed, why: str) -> list[str]:
    """The entries of `folder`, refusing any not in `allowed`: '{folder} holds {them}: {why}'."""
    names = _entries(folder, allowed)
    foreign = [name for name in names if name not in allowed]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise RunDirError(f"{folder} holds {shown}: {why}")
    return names


def _check_reference_names(folder: Path, what: str) -> list[str]:
    """The entries of `folder`, refusing any that a reference folder does not hold."""
    return _only(folder, REFERENCE_NAMES, f"it is not a reference folder, and {what} only ever "
                 f"replaces a reference (model.pt, reference.json, cache/); choose another --out")


def check_score_dir(out: str | os.PathLike) -> None:
    """Refuse, before any work, a `jestkit score` OUT that is a file or holds anything but a
    score's reference.json, cache/ and config.yaml (a train run, a `jestkit reference` folder,
    your files): the scores are never written into another command's folder."""
    out = Path(out)
    _check_folder(out)
    _only(out, SCORE_NAMES, "it is not a `jestkit score` folder (reference.json, cache/, "
          "config.yaml), and the scores are never written into another command's folder; "
          "choose another --out")  # fmt: skip


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


# every name jestkit gives a record: an output file of `jestkit eval` or `jestkit score --subset`
# may never take one of them
RECORD_NAMES = frozenset(
    [LOCK_NAME, "config.yaml", *RUN_FILES, "curves.png", "results.json", *REFERENCE_FILES,
     "manifest.json"]
)


def check_output_file(path: str | os.PathLike, flag: str, suffix: str) -> Path:
    """Refuse, before any work, an output file (`--out` of jestkit eval, `--subset` of jestkit
    score) that would replace a jestkit record (checkpoint.pt, result.json, config.yaml,
    reference.json, manifest.json, a cache part, ...), is a symlink or a folder, does not end in
    `suffix`, or whose folder is a file, cannot be written, or is a reference or its cache."""
    path = Path(path)
    if path.name in RECORD_NAMES or path.name.endswith((".tmp", ".parquet", ".pt")):
        raise RunDirError(
            f"{flag} {path} is the name of a jestkit record, which it would replace; "
            f"choose another file (ending in {suffix})"
        )
    if path.suffix != suffix:
        raise RunDirError(f"{flag} {path} must end in {suffix}")
    if path.is_symlink():
        raise RunDirError(f"{flag} {path} is a symlink; jestkit never writes through a link")
    if path.is_dir():
        raise RunDirError(f"{flag} {path} is a folder: give the file to write")
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())  # "." or "/"
    if not folder.is_dir():
        raise RunDirError(f"{flag} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise RunDirError(f"{flag} {path}: {folder} cannot be written")
    for p in (path.parent.resolve(), *path.parent.resolve().parents):
        marks = [name for name in RECORD_MARKS if (p / name).exists()]
        if marks:
            raise RunDirError(
                f"{flag} {path} is inside {p}, which holds {marks[0]} (a reference or its "
                f"cache); nothing is ever written into another command's folder"
            )
    return path
