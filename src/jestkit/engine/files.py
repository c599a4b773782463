"""Every file jestkit writes into a run, reference or cache folder, and every record it reads
back, goes through here.

Writing (`atomic_file`, `write_bytes_atomic`, `write_json_atomic`): the content goes to
PATH.tmp, created with O_CREAT|O_EXCL|O_NOFOLLOW (a leftover or a planted symlink there is
removed first, never written through), then renamed over PATH (a symlink at PATH is replaced,
its target untouched). A failed write (a full disk) removes PATH.tmp and leaves PATH as it was.

Reading (`open_regular`, `read_regular`, `read_text`, `read_json_record`): a file is opened with
O_NONBLOCK|O_NOFOLLOW and fstat'ed, so a symlink, a FIFO, a device or a folder is refused
without being read (a FIFO would hang the read, /dev/zero exhaust memory), and never more than a
bound is read. A JSON record must be an object holding the fields its reader names, each of
its type; a RecordError names the file and the field.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

MAX_RECORD_BYTES = 64 * 2**20  # a JSON or text record of jestkit's: far above any it writes


class RecordError(ValueError):
    """A record (JSON or text file) that cannot be used: the message names the file and what
    is wrong with it."""


def tmp_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: PATH.tmp."""
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into: PATH.tmp, opened so that nothing is
    written through a symlink; renamed over `path` when the block ends, removed if it raises.
    An OSError names the file and says that `path` is unchanged."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        tmp.unlink(missing_ok=True)  # a leftover, or a symlink planted there: never written through
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {tmp} ({e.strerror}); {path} is unchanged") from None
    try:
        with open(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"cannot write {tmp} ({e.strerror or e}); {path} is "
                          "unchanged") from None  # fmt: skip
        raise
    os.replace(tmp, path)


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    """`data` to PATH.tmp, then renamed over `path` (see atomic_file)."""
    with atomic_file(path) as f:
        f.write(data)


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    """JSON to PATH.tmp, then renamed over `path`, creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(json.dumps(obj, indent=2).encode(), path)


# -- reading ------------------------------------------------------------------------------------


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


@contextlib.contextmanager
def open_regular(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, int]]:
    """(file, size) of the regular file `path`; a RecordError for a missing file, a symlink, a
    FIFO, a device or a folder, none of which is read."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RecordError(f"{path} is a symlink; jestkit reads its records only from regular "
                              "files, never through a link") from None  # fmt: skip
        if e.errno == errno.ENOENT:
            raise RecordError(f"{path} does not exist") from None
        raise RecordError(f"{path} cannot be read ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RecordError(f"{path} is {_kind(info.st_mode)}, not a regular file; it was "
                              "not read")  # fmt: skip
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            yield f, info.st_size
    finally:
        os.close(fd)


def read_regular(path: str | os.PathLike, size: int | None = None,
                 max_bytes: int = MAX_RECORD_BYTES) -> bytes:  # fmt: skip
    """The bytes of the regular file `path` (see open_regular): exactly `size` of them when it
    is given (a file of another size is refused), else at most `max_bytes`; never more is read."""
    with open_regular(path) as (f, have):
        if size is not None and have != size:
            raise RecordError(f"{path} has {have} bytes, {size} were written (truncated or "
                              "replaced)")  # fmt: skip
        bound = size if size is not None else max_bytes
        if have > bound:
            raise RecordError(f"{path} holds {have} bytes, more than the {bound} a jestkit "
                              "record may hold")  # fmt: skip
        try:
            data = f.read(have)
            grown = f.read(1)  # the file grew since fstat: never read past what was judged
        except OSError as e:
            raise RecordError(f"{path} cannot be read ({e.strerror})") from None
    if grown or len(data) != have:
        raise RecordError(f"{path} changed while it was read; read it again")
    return data


def read_text(path: str | os.PathLike, max_bytes: int = MAX_RECORD_BYTES) -> str:
    """The UTF-8 text of the regular file `path`; a RecordError names a file in another
    encoding."""
    data = read_regular(path, max_bytes=max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it "
            "as UTF-8"
        ) from None


_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    dict: "an object",
    list: "a list",
}


def _fits(value, want: type) -> bool:
    if isinstance(value, bool):
        return want is bool
    if want is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, want)


def read_json_record(path: str | os.PathLike, what: str, fields: Mapping[str, type] = (),
                     fix: str = "") -> dict:  # fmt: skip
    """The JSON object in `path`, `what` it is (e.g. "a reference's reference.json"), with each
    of `fields` present and of its type (str, int, float: a finite number, dict, list; a dotted
    name reaches into objects: "config.selection.loss"). A RecordError names the file, the
    field and what is wrong; `fix` is appended to it."""
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    text = read_text(path)
    try:
        record = json.loads(text)
    except ValueError as e:
        raise RecordError(f"{path} is not valid JSON ({e}): it is truncated or damaged, or not "
                          f"{what}{tail}") from None  # fmt: skip
    if not isinstance(record, dict):
        raise RecordError(f"{path} holds a JSON {type(record).__name__}, not {what} (a JSON "
                          f"object){tail}")  # fmt: skip
    for name, want in dict(fields).items():
        value = record
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                raise RecordError(f"{path} has no {name!r}: it is not {what}, or it is "
                                  f"damaged{tail}")  # fmt: skip
            value = value[part]
        if not _fits(value, want):
            raise RecordError(f"{path}: {name!r} is {json.dumps(value)[:60]}, it must be "
                              f"{_TYPES.get(want, want.__name__)}{tail}")  # fmt: skip
    return record


__all__ = [
    "RecordError",
    "atomic_file",
    "open_regular",
    "read_json_record",
    "read_regular",
    "read_text",
    "tmp_path",
    "write_bytes_atomic",
    "write_json_atomic",
]


def save_png(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """A matplotlib figure written to `path` as a PNG the way every record is (atomic_file:
    never through a symlink, never half a file), then closed."""
    import matplotlib.pyplot as plt

    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)
