"""Candidate pools streamed from WebDataset tar shards or Parquet tables, never loaded whole.

    pool = ShardPool("data/shards-{0000..0009}.tar", ShardPoolConfig(buffer_size=1000, seed=0))
    for batch in pool.super_batches(B):   # {'image': (B, C, H, W) uint8, 'caption': [B], 'id': [B]}
        ...
    # or DataLoader(pool, batch_size=B, drop_last=True): the same batches, in the same order

Sources
* WebDataset tar shards as img2dataset writes them: the files of one sample are consecutive
  and share a key (`KEY.jpg` / `KEY.png` / `KEY.webp`, `KEY.txt` caption, optional `KEY.json`
  whose `uid` becomes the id; without one the id is the key). Read with Python's tarfile in
  streaming mode (`.tar`, `.tar.gz`, `.tgz`).
* Parquet tables (`.parquet`): an image column holding bytes, a path (relative to the table's
  folder) or Hugging Face's {bytes, path} struct, a caption column and an id column (DataComp:
  `uid`, 32 hex digits). Read a few hundred rows at a time (`parquet_batch_rows`).
* `source`: a path, a brace pattern (`shards-{0000..0009}.tar`, `{a,b}.parquet`), a glob, or a
  list of these. A pattern that matches nothing, or a listed file that is missing, raises;
  braces are expanded one name at a time, so a typo naming 10^9 files stops at the first missing
  one.

The stream. The pool reads its shards in the given order (globs sorted), each sample in file
order: record g = 0, 1, 2, ... of the whole stream. Rank r of world_size W owns the records with
g % W == r; every rank reads (but does not decode) the whole stream and keeps its slice, so each
record belongs to exactly one rank, never two, never none, whatever the shard sizes. The owned
records pass through a shuffle buffer of `buffer_size` raw records (bytes, not decoded): each
draw fills the buffer, then takes a uniformly random entry (a torch.Generator seeded from seed,
epoch and rank). Drawn images are decoded with Pillow (`mode`, then the user's `transform` on the
PIL image; without one a uint8 (C, H, W) tensor). One pass is one epoch; the next pass
reshuffles with the next epoch's seed. A super-batch is the next B decoded samples:
super_batches(B) and DataLoader(pool, batch_size=B) give the same ones.

Streams. With `streams` S > 1 the pool reads only stream `stream`'s shards: each epoch the shard
order (reshuffled from seed and epoch with `shuffle_shards`) is dealt round-robin to the S
streams (epoch_shards). jestkit.data.parallel runs one pool per stream, in DataLoader workers,
each rank its own streams; such a pool's duplicate check covers its own shards.

Resume. state_dict() holds the position in the stream (shard, record), the shuffle buffer's
raw records, the generator's state, the counters and the ids seen this epoch (for the duplicate
check), so load_state_dict() on a fresh pool continues with exactly the samples an uninterrupted
run would draw. Take it between super-batches (a DataLoader with num_workers=0 fetches nothing
ahead). The state's size is about buffer_size encoded images.

Bad input. A truncated shard (the sample being read when it ended, counted once; a shard
unreadable from the start, counted once), an undecodable image, a missing image, a missing,
empty or whitespace-only caption, a sample past a bound (max_sample_bytes, max_caption_chars,
max_image_pixels: judged from tar headers and image headers, before the bytes are read or the
pixels decoded), a symlink, hard link or special member in a tar, a Parquet image_path that is
absolute, leads outside the table's folder or is not a regular file (a FIFO, /dev/zero):
the sample is skipped and counted in `pool.skipped` (reason -> count; `pool.skipped_by_shard`
per shard) and the next good one takes its place, so every super-batch still holds B samples.
Once more than `min_bad` samples were skipped and they are more than `max_bad_fraction` of the
samples read by this rank, TooManyBadSamples stops the run, naming the shards. An id seen twice
in one epoch (checked over the whole stream, all ranks' records) raises DuplicateIdError naming
it and its shards. An id is a non-empty one-line string (a KEY.json uid of 123, [1, 2], true or
"", a Parquet id of floats: bad samples), a caption text (a Parquet list<string> caption, a
binary one that is not UTF-8: bad samples).

take(n) never gives one id twice: at the end of a pass it continues into the next epoch, and a
sample there whose id this take already holds waits for the next take (kept in the state). A
pass of fewer than n good samples is refused ("the super-batch is larger than the data"), before
any sample is decoded twice.

Iterating a pool in DataLoader workers is refused (a clear error): the counters, the threshold
and the exact resume live in the pool object, which workers would copy. jestkit.data.parallel
is the way to use workers (one pool per stream, each in one worker, their states collected by
torchdata's StatefulDataLoader). Within a process, decode in parallel with `decode_threads`
(Pillow releases the GIL while decoding); the samples and their order do not change with it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from jestkit.core.validate import (
    check_bool,
    check_generator_state,
    check_int,
    check_seed,
    check_state,
    real_number,
)
from jestkit.data.draft import apply_draft, decode_image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
CAPTION_EXTENSIONS = ("txt", "caption", "text")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "image_path", "path")
_CAPTION_COLUMNS = ("caption", "text", "txt")
_ID_COLUMNS = ("uid", "key", "id")

# skip reasons
TRUNCATED = "truncated shard"
UNREADABLE_SHARD = "unreadable shard"
UNREADABLE_ROWS = "unreadable row group"
UNDECODABLE = "undecodable image"
UNREADABLE_IMAGE = "unreadable image file"
NO_IMAGE = "no image"
NO_CAPTION = "no caption"
BAD_METADATA = "bad json or caption"
TOO_LARGE = "sample too large"
CAPTION_TOO_LONG = "caption too long"
IMAGE_TOO_LARGE = "image too large"
LINK_MEMBER = "link member"
NOT_A_FILE = "image path not a regular file"
OUTSIDE = "image path outside the table's folder"
BAD_PATH = "image path not a valid path"  # a NUL byte, or not a string
BAD_ID_TYPE = "id not a string"  # a KEY.json uid of 123, [1, 2], true, 1e400; a float id column
BAD_ID_TEXT = "id empty or with control characters"  # '', '  ', 'a\nb'
BAD_CAPTION_TYPE = "caption not text"  # a Parquet caption of list<string>, a number
MAX_JSON_BYTES = 1 << 20  # a sample's json metadata; larger is a bad sample (BAD_METADATA)


class TooManyBadSamples(RuntimeError):
    """More bad samples than the pool's threshold allows."""


class DuplicateIdError(ValueError):
    """The same id twice in one pass over the stream."""


@dataclass
class ShardPoolConfig:
    """How a ShardPool reads, shuffles, decodes and splits its stream.

    buffer_size: raw records in the shuffle buffer (0 or 1: the stream's order).
    seed: the shuffle's seed (with the epoch and rank).
    mode: Pillow mode each image is converted to ('RGB', 'L'; None keeps the file's).
    max_bad_fraction / min_bad: stop once more than min_bad samples were skipped and they are
        more than this fraction of the samples read by this rank.
    rank / world_size: this process's slice of the stream; None takes them from
        torch.distributed when it is initialised, else 0 and 1.
    check_duplicates: raise on an id seen twice in one epoch (keeps the epoch's ids in memory).
    image_column / caption_column / id_column: Parquet columns; None picks the first present of
        image|jpg|png|webp|image_path|path, caption|text|txt and uid|key|id.
    decode_threads: threads decoding a super-batch in super_batches() (0: in this thread).
    parquet_batch_rows: rows read from a Parquet file at a time.
    max_sample_bytes: the most bytes one sample's files may hold (a tar member is judged by its
        header, before it is read; a Parquet image by its bytes or its file's size); more: a bad
        sample ('sample too large').
    max_caption_chars: the most characters of a caption (a tar caption member of more than 4x
        this many bytes is not read); more: a bad sample ('caption too long').
    max_image_pixels: the most pixels (width x height, read from the image's header before it
        is decoded) of an image; more: a bad sample ('image too large'), never a decompression
        bomb.
    stream / streams: read only the shards of stream `stream` of `streams`: each epoch's shard
        order (see shuffle_shards) dealt round-robin, order[stream::streams]
        (jestkit.data.parallel); a stream needs at least one shard.
    shuffle_shards: each epoch, the shards in an order drawn from (seed, epoch), the same for
        every stream and rank (open_clip_train's detshuffle); False: the given order.
    draft_side: decode each JPEG at the smallest libjpeg scale (1/2, 1/4, 1/8) whose shorter
        side stays >= this many pixels, for a coarse scoring view (jestkit.data.draft); the
        sample then also holds its image bytes ('raw') for the full decode of the selected
        ones (ShardPool.decode_full), or None when it was decoded in full anyway (not a JPEG,
        or no larger than needed: its tensor is exact as it is). None: every image in full.
    """

    buffer_size: int = 1000
    seed: int = 0
    mode: str | None = "RGB"
    max_bad_fraction: float = 0.01
    min_bad: int = 10
    rank: int | None = None
    world_size: int | None = None
    check_duplicates: bool = True
    image_column: str | None = None
    caption_column: str | None = None
    id_column: str | None = None
    decode_threads: int = 0
    parquet_batch_rows: int = 256
    max_sample_bytes: int = 32 << 20
    max_caption_chars: int = 16384
    max_image_pixels: int = 64_000_000
    stream: int = 0
    streams: int = 1
    shuffle_shards: bool = False
    draft_side: int | None = None

    def __post_init__(self):
        # each value checked (and numbers of any kind kept as the plain int/float checked)
        for name, minimum in (("max_sample_bytes", 1), ("max_caption_chars", 1),
                              ("max_image_pixels", 1), ("parquet_batch_rows", 1), ("streams", 1),
                              ("buffer_size", 0), ("min_bad", 0), ("decode_threads", 0),
                              ("stream", 0)):  # fmt: skip
            setattr(self, name, check_int(name, getattr(self, name), minimum))
        self.seed = check_seed("seed", self.seed)
        self.max_bad_fraction = real_number("max_bad_fraction", self.max_bad_fraction)
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        self.check_duplicates = check_bool("check_duplicates", self.check_duplicates)
        self.shuffle_shards = check_bool("shuffle_shards", self.shuffle_shards)
        _check_mode(self.mode)
        if self.world_size is not None:
            self.world_size = check_int("world_size", self.world_size)
        if self.rank is not None:
            self.rank = check_int("rank", self.rank, 0)
        if (self.rank is None) != (self.world_size is None):
            raise ValueError("set rank and world_size together (or neither)")
        if self.world_size is not None and not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        if not 0 <= self.stream < self.streams:
            raise ValueError(f"stream {self.stream} is not in [0, streams={self.streams})")
        if self.draft_side is not None and self.draft_side < 1:
            raise ValueError(f"draft_side must be >= 1 (or None), got {self.draft_side}")


def _check_mode(mode: object) -> None:
    """None, or a Pillow mode an RGB or grayscale image converts to (not a bad sample each)."""
    if mode is None:
        return
    from PIL import Image

    for source in ("RGB", "L"):
        try:
            if isinstance(mode, str):
                Image.new(source, (1, 1)).convert(mode)
                return
        except (ValueError, KeyError):
            continue
    raise ValueError(
        f"mode must be None or a Pillow mode images convert to ('RGB', 'L', 'RGBA', ...), "
        f"got {mode!r}"
    )


def epoch_shards(n_shards: int, config: ShardPoolConfig, epoch: int) -> list[int]:
    """The shard indices stream config.stream reads in `epoch`, in reading order: the epoch's
    shard order (a permutation drawn from (seed, epoch) when shuffle_shards, else 0..n-1),
    dealt round-robin over the streams."""
    order = list(range(n_shards))
    if config.shuffle_shards:
        seed = np.random.SeedSequence([config.seed, epoch, 0x5EED]).generate_state(1)
        order = torch.randperm(n_shards, generator=torch.Generator().manual_seed(int(seed[0])))
        order = order.tolist()
    return order[config.stream :: config.streams]


# --- shard lists ---------------------------------------------------------------------------

_BRACE = re.compile(r"\{([^{}]*)\}")
MAX_EXPANDED = 1_000_000  # the most names expand_braces lists (list_shards expands lazily)


def _brace_items(body: str, pattern: str) -> range | list[str]:
    """The items of one {...}: a range (lazy, never built whole) or the comma-separated names."""
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        return range(lo, hi + 1) if hi >= lo else range(lo, hi - 1, -1)
    if "," in body:
        return body.split(",")
    raise ValueError(f"cannot expand {{{body}}} in {pattern!r}: use {{0000..0009}} or {{a,b}}")


def brace_count(pattern: str) -> int:
    """How many names `pattern` expands to (without expanding it)."""
    n = 1
    for m in _BRACE.finditer(pattern):
        n *= len(_brace_items(m.group(1), pattern))
    return n


def iter_braces(pattern: str) -> Iterator[str]:
    """`a-{0000..0002}.tar` -> a-0000.tar, a-0001.tar, a-0002.tar; `{x,y}` -> x, y (nested in
    order, zero padding kept from the first bound), one name at a time: a pattern naming 10^9
    files costs nothing until its names are used."""
    m = _BRACE.search(pattern)
    if m is None:
        yield pattern
        return
    items = _brace_items(m.group(1), pattern)
    if isinstance(items, range):
        first = m.group(1).split("..")[0]
        width = len(first) if first.startswith("0") else 0
        items = (str(i).zfill(width) for i in items)
    head, tail = pattern[: m.start()], pattern[m.end() :]
    for item in items:
        yield from iter_braces(head + item + tail)


def expand_braces(pattern: str) -> list[str]:
    """Every name of `pattern` (see iter_braces), as a list; more than MAX_EXPANDED names is a
    ValueError (a typo such as {0000..99999999}), raised before any is built."""
    n = brace_count(pattern)
    if n > MAX_EXPANDED:
        raise ValueError(f"{pattern!r} expands to {n:,} names, more than {MAX_EXPANDED:,}: check "
                         "its {lo..hi} ranges")  # fmt: skip
    return list(iter_braces(pattern))


def split_patterns(text: str) -> list[str]:
    """A comma-separated list of patterns, split only at the commas outside braces
    ('a/{0,1}.tar, b.tar' -> ['a/{0,1}.tar', 'b.tar']), each stripped, empty parts dropped."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth <= 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def shard_format(path: str) -> str:
    name = path.lower()
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise ValueError(
        f"{path}: unknown shard format (expected {', '.join(TAR_SUFFIXES + PARQUET_SUFFIXES)})"
    )


def _source_items(source: object) -> list[str]:
    """The paths or patterns of a shard source: one, or a list of them."""
    items = [source] if isinstance(source, str | os.PathLike) else source
    if isinstance(items, Iterable) and not isinstance(items, bytes | Mapping):
        items = [os.fspath(i) if isinstance(i, os.PathLike) else i for i in items]
        if all(isinstance(i, str) for i in items):
            return items
    raise TypeError(
        f"source must be a path, a pattern or a list of them, got {type(source).__name__} "
        f"{source!r:.60}"
    )


def list_shards(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The shard paths of a path, brace pattern, glob or list of these, in order. A pattern
    matching nothing or a missing file raises FileNotFoundError naming it."""
    items = _source_items(source)
    if not items:
        raise ValueError("no shards given (an empty list)")
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        count = brace_count(item)
        names = f", which names {count:,} files" if count > 1 else ""
        for path in iter_braces(item):  # lazily: the first missing file stops it
            if glob.has_magic(path):
                found = sorted(glob.glob(path))
                if not found:
                    raise FileNotFoundError(f"no file matches {path!r} (from {item!r}{names})")
                out.extend(found)
            elif os.path.isdir(path):
                raise IsADirectoryError(
                    f"{path!r} is a folder: pass its shards, e.g. {os.path.join(path, '*.tar')!r}"
                )
            elif not os.path.isfile(path):
                raise FileNotFoundError(f"shard {path!r} (from {item!r}{names}) does not exist")
            else:
                out.append(path)
    for path in out:
        shard_format(path)
    return out


# --- raw records -----------------------------------------------------------------------------


class Record(NamedTuple):
    """One sample as read from its shard, not decoded. `bad` holds a skip reason instead."""

    shard: int
    key: str
    id: str
    caption: str
    image: bytes | None  # encoded image
    path: str | None  # or a file holding it
    bad: str | None = None


def _split_name(name: str) -> tuple[str, str]:
    folder, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return os.path.join(folder, stem) if folder else stem, ext.lower() if dot else ""


def _tar_group(shard: int, key: str, files: dict[str, bytes], bad: str | None,
               config: ShardPoolConfig) -> Record:  # fmt: skip
    if bad is not None:  # judged from the members' headers: nothing of it was read
        return Record(shard, key, key, "", None, None, bad)
    image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
    text = next((files[e] for e in CAPTION_EXTENSIONS if e in files), None)
    uid = key
    try:
        caption = text.decode("utf-8").strip() if text is not None else None
        if "json" in files:
            meta = json.loads(files["json"])
            if isinstance(meta, dict) and meta.get("uid") is not None:
                uid = meta["uid"]
    except (UnicodeDecodeError, ValueError):
        return Record(shard, key, key, "", None, None, BAD_METADATA)
    bad = _id_verdict(uid, ints=False)
    if bad is not None:
        return Record(shard, key, key, "", None, None, bad)
    if image is None:
        return Record(shard, key, uid, "", None, None, NO_IMAGE)
    return _checked(Record(shard, key, uid, caption or "", image, None), config)


def _id_verdict(ident, ints: bool) -> str | None:
    """Why `ident` cannot be a sample's id (None: it can): ids are non-empty one-line strings (a
    Parquet integer column too, `ints`); anything else would be str()-ed into a wrong id."""
    if isinstance(ident, bool) or not isinstance(ident, str | int) or \
            (isinstance(ident, int) and not ints):  # fmt: skip
        return BAD_ID_TYPE
    if isinstance(ident, str) and (not ident.strip() or not ident.isprintable()):
        return BAD_ID_TEXT
    return None


def _checked(rec: Record, config: ShardPoolConfig) -> Record:
    """The record, or a bad one when its caption is empty or too long."""
    if not rec.caption.strip():
        return rec._replace(caption="", image=None, path=None, bad=NO_CAPTION)
    if len(rec.caption) > config.max_caption_chars:
        return rec._replace(caption="", image=None, path=None, bad=CAPTION_TOO_LONG)
    return rec


def _member_verdict(member: tarfile.TarInfo, ext: str, read: int,
                    config: ShardPoolConfig) -> str | None:  # fmt: skip
    """Why this member makes its sample bad, judged from its header alone (None: read it)."""
    if member.issym() or member.islnk():
        return LINK_MEMBER
    if not member.isfile():
        return LINK_MEMBER  # a device, FIFO or other special member
    if ext in CAPTION_EXTENSIONS and member.size > 4 * config.max_caption_chars:
        return CAPTION_TOO_LONG
    if ext == "json" and member.size > MAX_JSON_BYTES:
        return BAD_METADATA
    if read + member.size > config.max_sample_bytes:
        return TOO_LARGE
    return None


_WANTED = frozenset((*IMAGE_EXTENSIONS, *CAPTION_EXTENSIONS, "json"))


def _read_tar(path: str, shard: int, config: ShardPoolConfig) -> Iterator[Record]:
    """The samples of a tar shard, grouped by key, streamed. A truncated shard ends with one bad
    record (the sample in progress). Only the members a sample uses are read, each only after
    its header passed the bounds (_member_verdict): a bad member's bytes are skipped, not read."""
    key, files, bad, read = None, {}, None, 0
    compressed = not path.lower().endswith(".tar")
    mode = "r|*" if compressed else "r:"  # an uncompressed tar seeks over what it skips
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode=mode) as tar:
            for member in tar:
                if member.isdir():
                    continue
                k, ext = _split_name(member.name)
                if k != key:  # the previous sample is complete once the next one starts
                    if key is not None:
                        yield _tar_group(shard, key, files, bad, config)
                    key, files, bad, read = k, {}, None, 0
                if bad is not None or (member.isfile() and ext not in _WANTED):
                    continue  # tarfile skips (or seeks over) the member's bytes
                bad = _member_verdict(member, ext, read, config)
                if bad is not None:
                    files = {}
                    continue
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError("unexpected end of data")
                files[ext], read = data, read + len(data)
            end = tar.offset
        if not compressed and os.path.getsize(path) < end + 2 * tarfile.BLOCKSIZE:
            # a tar cut at a member boundary: tarfile stops quietly, without the end marker
            raise tarfile.ReadError("no end-of-archive marker")
    except (tarfile.TarError, EOFError, zlib.error, OSError):
        # nothing read: the whole shard is unreadable; else the sample in progress is lost
        reason = UNREADABLE_SHARD if key is None else TRUNCATED
        yield Record(shard, key or f"{path}:0", key or "", "", None, None, reason)
        return
    if key is not None:
        yield _tar_group(shard, key, files, bad, config)


def _pick_column(names: list[str], wanted: str | None, defaults: tuple[str, ...], what: str,
                 path: str) -> str:  # fmt: skip
    if wanted is not None:
        if wanted not in names:
            raise KeyError(f"{path}: no {what} column {wanted!r}; its columns are {names}")
        return wanted
    for name in defaults:
        if name in names:
            return name
    raise KeyError(
        f"{path}: no {what} column (looked for {', '.join(defaults)}); its columns are {names}: "
        f"rename its {what} column to one of these (the Python API can name it: "
        f"ShardPoolConfig.{what}_column)"
    )


def _parquet_record(shard: int, key: str, image, caption, ident, folder: str,
                    config: ShardPoolConfig) -> Record:  # fmt: skip
    if ident is None:
        ident = key
    elif isinstance(ident, bytes):
        ident = ident.hex()
    bad = _id_verdict(ident, ints=True)
    if bad is not None:
        return Record(shard, key, key, "", None, None, bad)
    ident = str(ident)
    if isinstance(image, dict):  # Hugging Face's Image feature: {bytes, path}
        image = image.get("bytes") or image.get("path")
    if image is None:
        return Record(shard, key, ident, "", None, None, NO_IMAGE)
    if caption is None:
        return Record(shard, key, ident, "", None, None, NO_CAPTION)
    if isinstance(caption, bytes):  # a binary column: text only when it is UTF-8, as in a tar
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError:
            return Record(shard, key, ident, "", None, None, BAD_METADATA)
    if not isinstance(caption, str):
        return Record(shard, key, ident, "", None, None, BAD_CAPTION_TYPE)
    if isinstance(image, bytes):
        if len(image) > config.max_sample_bytes:
            return Record(shard, key, ident, "", None, None, TOO_LARGE)
        return _checked(Record(shard, key, ident, caption, image, None), config)
    if not isinstance(image, str) or "\0" in image:
        return Record(shard, key, ident, "", None, None, BAD_PATH)
    path = _inside(folder, image)
    if path is None:
        return Record(shard, key, ident, "", None, None, OUTSIDE)
    return _checked(Record(shard, key, ident, caption, None, path), config)


def _inside(folder: str, relative: str) -> str | None:
    """`relative` joined to the table's folder, or None when it is absolute or leads outside it
    (by '..' or a symlink)."""
    if os.path.isabs(relative):
        return None
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, relative))
    return path if os.path.commonpath([root, path]) == root and path != root else None


def read_image_file(path: str, max_bytes: int) -> bytes | str:
    """The bytes of a regular file of at most max_bytes, or the reason it is not read: a FIFO,
    device or folder is never opened for reading (O_NONBLOCK, then fstat), a larger file never
    read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as e:
        return OUTSIDE if e.errno == errno.ELOOP else UNREADABLE_IMAGE
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return NOT_A_FILE
        if info.st_size > max_bytes:
            return TOO_LARGE
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
        return TOO_LARGE if len(data) > max_bytes else data
    except OSError:
        return UNREADABLE_IMAGE
    finally:
        os.close(fd)


def _read_parquet(path: str, shard: int, config: ShardPoolConfig, skip: int = 0
                  ) -> Iterator[Record]:  # fmt: skip
    """The rows of a Parquet file from row `skip` on, one row group at a time. A row group that
    cannot be read gives one bad record per row it holds (the count is in the footer); a file
    whose footer cannot be read gives one bad record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        if skip == 0:
            yield Record(shard, f"{path}:0", "", "", None, None, UNREADABLE_SHARD)
        return
    names = table.schema_arrow.names
    img = _pick_column(names, config.image_column, _IMAGE_COLUMNS, "image", path)
    cap = _pick_column(names, config.caption_column, _CAPTION_COLUMNS, "caption", path)
    uid = _pick_column(names, config.id_column, _ID_COLUMNS, "id", path)
    columns = list(dict.fromkeys([img, cap, uid]))
    folder, name = os.path.dirname(path), os.path.basename(path)
    start = 0  # the first row of the row group
    for group in range(table.metadata.num_row_groups):
        rows = table.metadata.row_group(group).num_rows
        if start + rows <= skip:  # resume: whole row groups are not read again
            start += rows
            continue
        row = start
        try:
            for batch in table.iter_batches(batch_size=config.parquet_batch_rows,
                                            row_groups=[group], columns=columns):  # fmt: skip
                d = batch.to_pydict()
                for image, caption, ident in zip(d[img], d[cap], d[uid], strict=True):
                    if row >= skip:
                        yield _parquet_record(shard, f"{name}:{row}", image, caption, ident,
                                              folder, config)  # fmt: skip
                    row += 1
        except (pa.ArrowException, OSError):
            for r in range(max(row, skip), start + rows):
                yield Record(shard, f"{name}:{r}", "", "", None, None, UNREADABLE_ROWS)
        start += rows
    if skip > start:
        raise ValueError(f"{path} holds {start} rows, fewer than the {skip} read when the state "
                         f"was saved: it changed")  # fmt: skip


def read_ids(source, config: ShardPoolConfig | None = None) -> Iterator[str]:
    """The id of every good record of the shards, in stream order, without decoding images (the
    same rule as the pool: a JSON uid, else the key; a Parquet id column)."""
    config = config or ShardPoolConfig()
    for index, path in enumerate(list_shards(source)):
        records = _read_parquet(path, index, config) if shard_format(path) == "parquet" else \
            _read_tar(path, index, config)  # fmt: skip
        for rec in records:
            if rec.bad is None:
                yield rec.id


# --- content digests --------------------------------------------------------------------------

_DIGEST_TEXT = CAPTION_EXTENSIONS + ("json",)
_DIGEST_MAX_TEXT = 1 << 20  # a longer caption or json is a bad sample: its header is hashed


def shard_digest(path: str) -> str:
    """A digest of what a shard says, without decoding an image: for a tar, every member's
    header (name, size, mtime) and the bytes of its captions and json; for Parquet, the footer
    (every column chunk's size, offset and statistics) and the caption and id columns. A
    shard re-captioned under the same name and size gets another digest. An uncompressed tar is
    read header by header (images are skipped over, not read); a damaged shard's digest covers
    what could be read."""
    h = hashlib.sha256()
    try:
        if shard_format(path) == "parquet":
            _digest_parquet(path, h)
        else:
            _digest_tar(path, h)
    except Exception as e:  # noqa: BLE001 - a damaged shard is counted when read; its digest says so
        h.update(f"unreadable: {type(e).__name__}".encode())
    return h.hexdigest()


def _digest_tar(path: str, h) -> None:
    mode = "r:" if path.lower().endswith(".tar") else "r|*"  # random access skips the images
    with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode=mode) as tar:
        for member in tar:
            h.update(f"{member.name}\0{member.type!r}\0{member.size}\0{member.mtime}\0".encode())
            ext = _split_name(member.name)[1]
            if member.isfile() and ext in _DIGEST_TEXT and member.size <= _DIGEST_MAX_TEXT:
                h.update(tar.extractfile(member).read())


def _digest_parquet(path: str, h) -> None:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    h.update(json.dumps(table.metadata.to_dict(), sort_keys=True, default=str).encode())
    names = table.schema_arrow.names
    columns = [_pick_column(names, None, defaults, what, path)
               for defaults, what in ((_CAPTION_COLUMNS, "caption"), (_ID_COLUMNS, "id"))]
    for batch in table.iter_batches(batch_size=4096, columns=list(dict.fromkeys(columns))):
        for column in batch.columns:
            for buffer in column.buffers():
                if buffer is not None:
                    h.update(memoryview(buffer))


# --- the pool --------------------------------------------------------------------------------


def _default_rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardPool(IterableDataset):
    """A candidate pool streamed from tar or Parquet shards; see the module docstring.

    source: a path, brace pattern, glob, or a list of these.
    config: ShardPoolConfig; keyword overrides replace its fields.
    transform: called on each decoded PIL image (after `mode`); its result is the sample's
        'image'. Without one: a uint8 tensor (C, H, W).
    Samples are dicts {'image', 'caption': str, 'id': str}. Counters: skipped (reason -> count),
    skipped_by_shard (path -> count), good (samples yielded), epoch.
    """

    def __init__(self, source, config: ShardPoolConfig | None = None,
                 transform: Callable[[Any], Any] | None = None, **overrides):  # fmt: skip
        config = config or ShardPoolConfig()
        if not isinstance(config, ShardPoolConfig):
            raise TypeError(
                f"config must be a ShardPoolConfig (or None), got {type(config).__name__}"
            )
        if overrides:
            config = ShardPoolConfig(**{**asdict(config), **overrides})
        self.config = config
        self.shards = list_shards(source)
        if len(self.shards) < config.streams:
            raise ValueError(
                f"{len(self.shards)} shards cannot feed {config.streams} streams: each stream "
                f"reads whole shards; use at most {len(self.shards)} streams or more shards"
            )
        self.transform = transform
        if config.rank is None:
            self.rank, self.world_size = _default_rank()
        else:
            self.rank, self.world_size = config.rank, config.world_size
        self._deferred: list[tuple[Record, dict | None]] = []  # take()'s repeats, for the next
        self._start_epoch(0)

    # -- state --

    def _start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._shard, self._record, self._global = 0, 0, 0  # next record to read
        self._buffer: list[Record] = []
        self._reader: Iterator[Record] | None = None
        self._seen_ids: dict[str, int] = {}
        self._order = epoch_shards(len(self.shards), self.config, epoch)
        self._epoch_good = 0  # good samples drawn this epoch
        entropy = [self.config.seed, epoch, self.rank]
        if self.config.streams > 1:
            entropy.append(self.config.stream)
        seed = np.random.SeedSequence(entropy).generate_state(1)
        self._generator = torch.Generator().manual_seed(int(seed[0]))
        if epoch == 0:
            self.good = 0
            self.skipped: Counter[str] = Counter()
            self.skipped_by_shard: Counter[str] = Counter()

    def __getstate__(self) -> dict:
        # an open shard reader (a generator) cannot be pickled or copied; it is reopened at the
        # same record when next needed
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def state_dict(self) -> dict:
        """Everything needed to continue at this sample boundary (torch.save-able)."""
        return {
            "shards": list(self.shards),
            "rank": self.rank,
            "world_size": self.world_size,
            "seed": self.config.seed,
            "buffer_size": self.config.buffer_size,
            "stream": self.config.stream,
            "streams": self.config.streams,
            "shuffle_shards": self.config.shuffle_shards,
            "epoch": self.epoch,
            "position": [self._shard, self._record, self._global],
            "buffer": [tuple(r) for r in self._buffer],
            "generator": self._generator.get_state(),
            "good": self.good,
            "epoch_good": self._epoch_good,
            "skipped": dict(self.skipped),
            "skipped_by_shard": dict(self.skipped_by_shard),
            "seen_ids": dict(self._seen_ids),
            "deferred": [tuple(rec) for rec, _ in self._deferred],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from state_dict(); another pool's state, or a damaged one, is refused and
        changes nothing."""
        state = check_state("state", state, _STATE_KEYS, "ShardPool")
        c = self.config
        mine = {"shards": list(self.shards), "rank": self.rank, "world_size": self.world_size,
                "seed": c.seed, "buffer_size": c.buffer_size, "stream": c.stream,
                "streams": c.streams, "shuffle_shards": c.shuffle_shards}  # fmt: skip
        defaults = {"stream": 0, "streams": 1, "shuffle_shards": False}  # older states
        for name, value in mine.items():
            if state.get(name, defaults.get(name)) != value:
                raise ValueError(
                    f"this state was saved by a pool with {name} = {state.get(name)!r}, this pool "
                    f"has {value!r}: resuming would not continue the same stream"
                )
        epoch, position, buffer = _stream_state(state, len(self.shards))
        generator = check_generator_state("state['generator']", state["generator"],
                                          self._generator)  # fmt: skip
        self._start_epoch(epoch)
        self._shard, self._record, self._global = position
        self._buffer = buffer
        self._generator.set_state(generator)
        self.good = state["good"]
        self._epoch_good = state.get("epoch_good", 1)
        self.skipped = Counter(state["skipped"])
        self.skipped_by_shard = Counter(state["skipped_by_shard"])
        self._seen_ids = dict(state["seen_ids"])
        self._deferred = [(Record(*r), None) for r in state.get("deferred", [])]

    # -- reading --

    def _open_shard(self, index: int, skip: int) -> Iterator[Record]:
        """The records of a shard from record `skip` on (resume)."""
        path = self.shards[index]
        if shard_format(path) == "parquet":
            return _read_parquet(path, index, self.config, skip)
        reader = _read_tar(path, index, self.config)
        for _ in range(skip):  # a tar stream has no index: read (not decode) what came before
            if next(reader, None) is None:
                raise ValueError(
                    f"{path} holds fewer than the {skip} samples read from it when the state was "
                    f"saved: it changed"
                )
        return reader

    def _next_owned(self) -> Record | None:
        """The next record of this rank's slice, or None at the end of the stream."""
        while self._shard < len(self._order):
            if self._reader is None:
                self._reader = self._open_shard(self._order[self._shard], self._record)
            rec = next(self._reader, None)
            if rec is None:
                self._reader = None
                self._shard, self._record = self._shard + 1, 0
                continue
            self._record += 1
            g, self._global = self._global, self._global + 1
            self._check_duplicate(rec)  # over every rank's records: all ranks read all
            if g % self.world_size != self.rank:
                continue
            return rec
        return None

    def _check_duplicate(self, rec: Record) -> None:
        if not self.config.check_duplicates or rec.bad is not None:
            return
        where = f"{self.shards[rec.shard]} (key {rec.key})"
        first = self._seen_ids.get(rec.id)
        if first is not None:
            raise DuplicateIdError(
                f"id {rec.id!r} appears twice in the stream: in {self.shards[first]} and in "
                f"{where}; ids must be unique: list each shard once, and give every sample its own "
                f"id (a tar sample's KEY.json uid, else its key; a Parquet uid, key or id column)"
            )
        self._seen_ids[rec.id] = rec.shard

    def _next_raw(self) -> Record | None:
        """The next record of this rank's shuffled slice (bad ones included)."""
        size = max(self.config.buffer_size, 1)
        while len(self._buffer) < size:
            rec = self._next_owned()
            if rec is None:
                break
            self._buffer.append(rec)
        if not self._buffer:
            return None
        if len(self._buffer) == 1:  # buffer_size 0 or 1, or the end of the epoch
            return self._buffer.pop()
        i = int(torch.randint(len(self._buffer), (1,), generator=self._generator))
        rec = self._buffer[i]
        self._buffer[i] = self._buffer[-1]
        self._buffer.pop()
        return rec

    def records(self, index: int) -> Iterator[Record]:
        """The raw (not decoded) records of shard `index`, bad ones included, in file order."""
        return self._open_shard(index, 0)

    def decode(self, rec: Record) -> dict | str:
        """A raw record as a sample {'image', 'caption', 'id'} (through the transform), or the
        reason it is bad; counts nothing."""
        return self._decode(rec)

    def _decode(self, rec: Record) -> dict | str:
        """The sample, or the reason it is skipped."""
        from PIL import Image

        if rec.bad is not None:
            return rec.bad
        data = rec.image
        if data is None:
            data = read_image_file(rec.path, self.config.max_sample_bytes)
            if isinstance(data, str):
                return data
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > self.config.max_image_pixels:
                    return IMAGE_TOO_LARGE  # judged from the header: never decoded
                scale = 1
                if self.config.draft_side is not None:
                    scale = apply_draft(im, self.config.draft_side)
                im.load()
                image = im.convert(self.config.mode) if self.config.mode else im.copy()
        except Image.DecompressionBombError:
            return IMAGE_TOO_LARGE
        except Exception:  # noqa: BLE001 - whatever Pillow raises on a bad file is a bad sample
            return UNDECODABLE
        if self.transform is not None:
            out = self.transform(image)
        else:
            array = np.asarray(image)
            out = torch.from_numpy(array.copy())
            out = out.unsqueeze(0) if out.dim() == 2 else out.permute(2, 0, 1).contiguous()
        sample = {"image": out, "caption": rec.caption, "id": rec.id}
        if self.config.draft_side is not None:  # None: decoded in full already, exact as is
            sample["raw"] = data if scale > 1 else None
        return sample

    def decode_full(self, raw: bytes):
        """A drafted sample's image decoded in full ('raw': its bytes) through the transform:
        what the pool gives without draft_side, for the selected examples."""
        if self.transform is None:
            raise ValueError("decode_full needs the pool's transform (a PIL image -> tensor)")
        return decode_image(raw, self.config.mode, self.transform)

    def _count_bad(self, rec: Record, reason: str) -> None:
        self.skipped[reason] += 1
        self.skipped_by_shard[self.shards[rec.shard]] += 1
        bad = self.n_skipped
        read = bad + self.good
        if bad > self.config.min_bad and bad > self.config.max_bad_fraction * read:
            worst = ", ".join(f"{p} ({n})" for p, n in self.skipped_by_shard.most_common(5))
            raise TooManyBadSamples(
                f"{bad} of the {read} samples read so far were skipped "
                f"({dict(self.skipped)}), more than max_bad_fraction = "
                f"{self.config.max_bad_fraction} allows; the last in {self.shards[rec.shard]} "
                f"(key {rec.key}); bad samples by shard: {worst}"
            )

    def _take(self, n: int, executor: ThreadPoolExecutor | None) -> list[tuple[Record, dict]]:
        """The next n good samples with their records (fewer only at the end of the epoch)."""
        out: list[tuple[Record, dict]] = []
        while len(out) < n:
            recs = []
            while len(recs) < n - len(out):
                rec = self._next_raw()
                if rec is None:
                    break
                recs.append(rec)
            if not recs:
                break
            decoded = list(executor.map(self._decode, recs)) if executor else \
                [self._decode(r) for r in recs]  # fmt: skip
            for rec, sample in zip(recs, decoded, strict=True):
                if isinstance(sample, str):
                    self._count_bad(rec, sample)
                else:
                    self.good += 1
                    self._epoch_good += 1
                    out.append((rec, sample))
        return out

    def _check_workers(self) -> None:
        if get_worker_info() is not None:
            raise RuntimeError(
                "ShardPool does not run in DataLoader workers (num_workers > 0): its skip "
                "counters, bad-sample threshold and exact resume live in this process. Use "
                "num_workers=0, and ShardPoolConfig(decode_threads=N) with pool.super_batches(B) "
                "to decode in parallel"
            )

    def __iter__(self) -> Iterator[dict]:
        """One sample at a time, continuing from the current state to the end of the epoch (the
        next iteration starts the next epoch). One iterator at a time."""
        self._check_workers()
        while True:
            got = self._take(1, None)
            if not got:
                self._start_epoch(self.epoch + 1)
                return
            yield got[0][1]

    def super_batches(self, batch_size: int, collate: Callable | None = default_collate
                      ) -> Iterator[Any]:  # fmt: skip
        """The rest of this epoch as super-batches of exactly batch_size samples, collated (a
        short last one is dropped, as DataLoader(drop_last=True) does).

        A generator: one pass (the rest of this epoch; the pool then starts its next epoch, so
        call it again for the next), and no len, since how many samples a stream holds is known
        only once it has been read (bad samples are skipped). A loop that needs a len (an LR
        schedule sized on it, jestkit.dropin.SelectiveLoader's len) counts its steps itself:
        e.g. itertools.islice(pool.super_batches(B), steps) after sizing the schedule on steps,
        or wrap an epoch of known size in a DataLoader of your own."""
        batch_size = check_int("batch_size", batch_size)
        self._check_workers()
        threads = self.config.decode_threads
        executor = ThreadPoolExecutor(threads) if threads > 0 else None
        try:
            while True:
                samples = [sample for _, sample in self._take(batch_size, executor)]
                if len(samples) < batch_size:
                    self._start_epoch(self.epoch + 1)
                    return
                yield collate(samples) if collate is not None else samples
        finally:
            if executor is not None:
                executor.shutdown()

    def take(self, n: int, executor: ThreadPoolExecutor | None = None) -> list[dict]:
        """The next n good samples, continuing into the next epoch (reshuffled) when this one
        ends, so never fewer, and never one id twice: a sample of the next epoch whose id this
        take already holds waits for the next take (`deferred`, kept in the state). Each sample
        also holds its 'epoch'. A pass holding fewer than n good samples is refused (the take
        would repeat samples). Unlike iteration, this runs in a DataLoader worker
        (jestkit.data.parallel keeps one pool per stream there)."""
        out, ids = [], set()
        waiting, self._deferred = self._deferred, []
        for rec, sample in waiting:  # the previous take's repeats, first
            if len(out) < n:
                sample = sample if sample is not None else self._redecode(rec)
                out.append(sample)
                ids.add(sample["id"])
            else:
                self._deferred.append((rec, sample))
        this_epoch = 0  # good samples of the current epoch drawn by this take
        while len(out) < n:
            wanted = n - len(out)
            got = self._take(wanted, executor)
            this_epoch += len(got)
            for rec, sample in got:
                sample["epoch"] = self.epoch
                if sample["id"] in ids:
                    self._deferred.append((rec, sample))
                else:
                    out.append(sample)
                    ids.add(sample["id"])
            if len(got) < wanted:  # the epoch ended
                self._check_pass(n, this_epoch)
                self._start_epoch(self.epoch + 1)
                this_epoch = 0
        return out

    def _check_pass(self, n: int, this_epoch: int) -> None:
        """At the end of an epoch within a take of n: refuse a pass that holds no good sample,
        or that this take drew whole and still needs more (fewer than n good samples)."""
        shards = ", ".join(self.shards[i] for i in self._order[:3])
        shards += ", ..." if len(self._order) > 3 else ""
        if self._epoch_good == 0:
            raise ValueError(f"no good sample in a whole pass over the shards of stream "
                             f"{self.config.stream} ({shards})")  # fmt: skip
        if this_epoch == self._epoch_good:
            raise ValueError(
                f"the super-batch is larger than the data: stream {self.config.stream}'s shards "
                f"({shards}) hold {self._epoch_good} good samples, and it gives {n} to every "
                f"super-batch, which would repeat samples; lower the batch size or the filter "
                f"ratio (--training.batch_size, --selection.filter_ratio), use fewer streams "
                f"(--shards.streams), or add shards"
            )

    def _redecode(self, rec: Record) -> dict:
        """A deferred sample restored from a state: decoded again (it was good when drawn)."""
        sample = self._decode(rec)
        if isinstance(sample, str):
            raise ValueError(f"{self.shards[rec.shard]} (key {rec.key}) changed since the state "
                             f"was saved: its sample is now bad ({sample})")  # fmt: skip
        sample["epoch"] = self.epoch
        return sample


_STATE_KEYS = (
    "shards", "rank", "world_size", "seed", "buffer_size", "epoch", "position", "buffer",
    "generator", "good", "skipped", "skipped_by_shard", "seen_ids",
)  # fmt: skip


def _stream_state(state: Mapping, n_shards: int) -> tuple[int, list[int], list[Record]]:
    """The epoch, position and buffer of a ShardPool state, checked (with its counters)."""

    def damaged(key: str, why: str) -> ValueError:
        return ValueError(f"state[{key!r}] {why}: not a ShardPool.state_dict(), or a damaged one")

    def count(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    epoch, position = state["epoch"], state["position"]
    if not count(epoch):
        raise damaged("epoch", f"is {epoch!r:.40}, not a count")
    if not isinstance(position, list | tuple) or len(position) != 3 or \
            not all(count(v) for v in position):  # fmt: skip
        raise damaged("position", f"is {position!r:.60}, not 3 counts")
    if not count(state["good"]):
        raise damaged("good", f"is {state['good']!r:.40}, not a count")
    for key in ("skipped", "skipped_by_shard", "seen_ids"):
        if not isinstance(state[key], Mapping):
            raise damaged(key, f"is a {type(state[key]).__name__}, not a dict")
    buffer = []
    for fields in state["buffer"] if isinstance(state["buffer"], list | tuple) else [None]:
        rec = _record(fields, n_shards)
        if rec is None:
            raise damaged("buffer", f"holds a malformed record {fields!r:.80}")
        buffer.append(rec)
    return epoch, list(position), buffer


def _record(fields: object, n_shards: int) -> Record | None:
    """A Record of a state's buffer, or None when the fields are not one of this pool's."""
    try:
        rec = Record(*fields)
    except TypeError:
        return None
    ok = (isinstance(rec.shard, int) and 0 <= rec.shard < n_shards
          and all(isinstance(v, str) for v in (rec.key, rec.id, rec.caption))
          and all(isinstance(v, t | None) for v, t in ((rec.image, bytes), (rec.path, str),
                                                        (rec.bad, str))))  # fmt: skip
    return rec if ok else None


__all__ = [
    "DuplicateIdError",
    "ShardPool",
    "ShardPoolConfig",
    "TooManyBadSamples",
    "epoch_shards",
    "brace_count",
    "expand_braces",
    "iter_braces",
    "list_shards",
    "read_ids",
    "split_patterns",
]
