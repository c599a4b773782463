"""Held-out evaluation sets on your own data, read the way clip_benchmark reads custom sets.

clip_benchmark's WebDataset layout (what `clip_benchmark_export_wds` writes):

    FOLDER/test/nshards.txt                          the number of shards n
    FOLDER/test/0.tar ... (n-1).tar                  KEY.webp|png|jpg + KEY.cls (class index)
                                                     or KEY.txt (captions, one per line)
    FOLDER/classnames.txt                            zero-shot: one class name per line
    FOLDER/zeroshot_classification_templates.txt     zero-shot: one template per line, with {c}
    FOLDER/dataset_type.txt                          "retrieval" for retrieval sets

A retrieval set may also be a shard pattern (img2dataset's layout, as `--shards.pattern`
reads it: KEY.jpg + KEY.txt + optional KEY.json with a uid). A zero-shot set given as a shard
pattern finds its classnames.txt and templates in the shards' folder or the one above it.
`NAME=PATH` names a set (its metrics are recorded as NAME/metric); the default name is the
folder's.

Everything is checked when the set is loaded, before any training: unreadable, truncated or
empty shards, images that do not decode, samples without a label or caption, labels outside
the class names, templates without `{c}` (or whose `{c}` does not render the class name, as
`{{c}}`), fewer than two class names or the same name twice, images larger than the training
shards' `max_image_pixels` (judged from the header, never decoded). The encoded images stay
in memory (a held-out set is small); they are decoded and transformed at each evaluation. A
sample's id is its JSON uid, else its key (the rule of jestkit.data.shards), for the check
that the set is held out.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jestkit.data.shards import IMAGE_EXTENSIONS, ShardPoolConfig, list_shards
from jestkit.engine.files import RecordError, read_text

KINDS = ("zeroshot", "retrieval")
MAX_MEMBER_BYTES = ShardPoolConfig().max_sample_bytes  # the training pool's bound (32 MiB)
MAX_IMAGE_PIXELS = ShardPoolConfig().max_image_pixels  # and its bound on an image's pixels
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
_IMAGE_ORDER = ("webp", "png", "jpg", "jpeg") + tuple(
    e for e in IMAGE_EXTENSIONS if e not in ("webp", "png", "jpg", "jpeg")
)


class EvalSetError(ValueError):
    """An evaluation set that cannot be used; the message names the file and what is wrong."""


@dataclass
class EvalSet:
    """One held-out set, loaded and checked. images: encoded bytes, one per sample; labels
    (zero-shot) or captions (retrieval, one list per image)."""

    name: str
    kind: Literal["zeroshot", "retrieval"]
    shards: list[str]
    ids: list[str]
    images: list[bytes]
    labels: list[int] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    classnames: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def prompts(self) -> list[str]:
        """Every class's prompts, class by class: template.format(c=name)."""
        return [t.format(c=c) for c in self.classnames for t in self.templates]

    def flat_captions(self) -> tuple[list[str], list[int]]:
        """(every caption, the index of its image)."""
        texts, image = [], []
        for i, caps in enumerate(self.captions):
            texts += caps
            image += [i] * len(caps)
        return texts, image


def parse_spec(spec: str) -> tuple[str | None, str]:
    """'NAME=PATH' -> (NAME, PATH); 'PATH' -> (None, PATH)."""
    name, eq, path = spec.partition("=")
    if eq and name and "/" not in name and "{" not in name:
        return name, path
    return None, spec


def _default_name(path: str) -> str:
    p = Path(path.split(",")[0])
    folder = p if p.is_dir() else p.parent
    if folder.name == "test":
        folder = folder.parent
    return folder.resolve().name or "eval"


def _layout_shards(folder: Path) -> list[str]:
    nshards = folder / "test" / "nshards.txt"
    if not nshards.is_file():
        raise EvalSetError(
            f"{folder} is a folder without test/nshards.txt: not clip_benchmark's WebDataset "
            "layout; give its shards as a pattern instead (e.g. FOLDER/'{0..9}.tar')"
        )
    try:
        n = int(_text(nshards).strip())
    except ValueError:
        raise EvalSetError(f"{nshards} must hold the number of shards, an integer") from None
    if n < 1:
        raise EvalSetError(f"{nshards} says {n} shards: an evaluation set needs at least one")
    shards = [folder / "test" / f"{i}.tar" for i in range(n)]
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise EvalSetError(f"{nshards} says {n} shards, but {missing[:3]} do not exist")
    return [str(s) for s in shards]


def _dataset_type(folder: Path) -> str:
    path = folder / "dataset_type.txt"
    return _text(path).strip().lower() if path.is_file() else "classification"


def _text(path: Path) -> str:
    """A set's text file (UTF-8, a regular file of at most 1 MiB); an EvalSetError names it."""
    try:
        return read_text(path, max_bytes=2**20)
    except RecordError as e:
        raise EvalSetError(str(e)) from None


def _lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise EvalSetError(f"no {path}: a zero-shot set needs its {what}, one per line")
    lines = [line.strip() for line in _text(path).rstrip().splitlines()]
    if not lines or not lines[0]:
        raise EvalSetError(f"{path} is empty: a zero-shot set needs its {what}, one per line")
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        raise EvalSetError(f"{path}: line {blank[0]} is blank; one {what[:-1]} per line")
    return lines


def _templates(path: Path) -> list[str]:
    templates = _lines(path, "templates")
    for i, t in enumerate(templates):
        try:  # {{c}} holds "{c}" but renders the same text for every class
            ok = "{c}" in t and t.format(c="x") != t.format(c="y")
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise EvalSetError(
                f"{path}, line {i + 1}: template {t!r} must name the class as {{c}} and have no "
                "other braces (clip_benchmark fills it with template.format(c=classname))"
            )
    return templates


def _classnames(path: Path) -> list[str]:
    """The class names: at least two, all different (identical names give identical
    classifiers, and one class is always right: the set would measure nothing)."""
    names = _lines(path, "class names")
    if len(names) < 2:
        raise EvalSetError(f"{path} names one class ({names[0]!r}): a zero-shot set needs at "
                           "least two, or every prediction is right")  # fmt: skip
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        key = name.casefold()
        if key in first:
            raise EvalSetError(f"{path}: line {i + 1} ({name!r}) names the class of line "
                               f"{first[key] + 1} again; each class needs its own name")
        first[key] = i
    return names


def _metadata_folder(shards: list[str]) -> Path:
    folder = Path(shards[0]).parent
    for candidate in (folder, folder.parent):
        if (candidate / CLASSNAMES).is_file():
            return candidate
    return folder


def _read_shard(path: str) -> list[tuple[str, dict[str, bytes]]]:
    """The samples of a tar shard: (key, {extension: bytes}), in order; an unreadable or
    truncated shard is an error naming it."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, base = os.path.split(member.name)
                stem, _, ext = base.partition(".")
                key = os.path.join(folder, stem) if folder else stem
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                if member.size > MAX_MEMBER_BYTES:  # judged by its header, before it is read
                    raise EvalSetError(f"{path} (key {key}): {member.name} holds {member.size} "
                                       f"bytes, more than {MAX_MEMBER_BYTES} (a sample's file)")
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError("unexpected end of data")
                samples[-1][1][ext.lower()] = data
    except (tarfile.TarError, EOFError, OSError) as e:
        raise EvalSetError(f"evaluation shard {path} cannot be read ({e}): rewrite it") from None
    return samples


def _check_image(data: bytes, path: str, key: str) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:  # from the header: never decoded
                raise EvalSetError(
                    f"{path} (key {key}): the image is {im.width} x {im.height} pixels, more "
                    f"than {MAX_IMAGE_PIXELS} (the training shards' --shards.max_image_pixels)"
                )
            im.load()
    except EvalSetError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever Pillow raises on a bad file
        raise EvalSetError(f"{path} (key {key}): the image does not decode ({e})") from None


def load_eval_set(spec: str, kind: Literal["zeroshot", "retrieval"]) -> EvalSet:
    """The set `spec` (NAME=PATH, PATH a clip_benchmark folder or a shard pattern), checked."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    name, path = parse_spec(spec)
    flag = f"--eval.{kind} {spec}"
    if os.path.isdir(path):
        folder = Path(path)
        shards = _layout_shards(folder)
        dtype = _dataset_type(folder)
        want = "retrieval" if kind == "retrieval" else "classification"
        if dtype != want:
            raise EvalSetError(
                f"{flag}: {folder}/dataset_type.txt says {dtype!r}, a {kind} set must be "
                f"{want!r} (zero-shot: no dataset_type.txt or 'classification'; multi-label "
                "sets are not supported)"
            )
    else:
        try:
            shards = list_shards(path)
        except (ValueError, OSError) as e:
            raise EvalSetError(f"{flag}: {e}") from None
        if any(not s.lower().endswith((".tar", ".tar.gz", ".tgz")) for s in shards):
            raise EvalSetError(f"{flag}: evaluation sets are WebDataset tar shards")
        folder = _metadata_folder(shards)
    out = EvalSet(name or _default_name(path), kind, shards, [], [])
    if kind == "zeroshot":
        out.classnames = _classnames(folder / CLASSNAMES)
        out.templates = _templates(folder / TEMPLATES)
    for shard in shards:
        for key, files in _read_shard(shard):
            _add_sample(out, shard, key, files)
    if not out.images:
        raise EvalSetError(f"{flag}: its shards ({', '.join(shards[:3])}) hold no samples")
    _check_unique(out)
    return out


def _add_sample(out: EvalSet, shard: str, key: str, files: dict[str, bytes]) -> None:
    image = next((files[e] for e in _IMAGE_ORDER if e in files), None)
    if image is None:
        raise EvalSetError(f"{shard} (key {key}): no image (looked for {', '.join(_IMAGE_ORDER)})")
    _check_image(image, shard, key)
    ident = key
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except ValueError:
            raise EvalSetError(f"{shard} (key {key}): {key}.json is not JSON") from None
        if isinstance(meta, dict) and meta.get("uid") is not None:
            ident = str(meta["uid"])
    if out.kind == "zeroshot":
        if "cls" not in files:
            raise EvalSetError(f"{shard} (key {key}): no {key}.cls, the class index of a "
                               "zero-shot sample")  # fmt: skip
        try:
            label = int(files["cls"].decode().strip())
        except ValueError:
            raise EvalSetError(f"{shard} (key {key}): {key}.cls is not an integer") from None
        if not 0 <= label < len(out.classnames):
            raise EvalSetError(
                f"{shard} (key {key}): class {label}, but {CLASSNAMES} names "
                f"{len(out.classnames)} classes (0 to {len(out.classnames) - 1}): the class "
                "names do not match the labels"
            )
        out.labels.append(label)
    else:
        text = next((files[e] for e in ("txt", "caption", "text") if e in files), None)
        captions = [] if text is None else [
            c.strip() for c in text.decode("utf-8", "replace").splitlines() if c.strip()
        ]  # fmt: skip
        if not captions:
            raise EvalSetError(f"{shard} (key {key}): no caption ({key}.txt, one per line)")
        out.captions.append(captions)
    out.ids.append(ident)
    out.images.append(image)


def _check_unique(s: EvalSet) -> None:
    seen: set[str] = set()
    for i in s.ids:
        if i in seen:
            raise EvalSetError(f"evaluation set {s.name!r}: id {i!r} appears twice")
        seen.add(i)


def overlap(sets: list[EvalSet], train_ids: Iterable[str]) -> dict[str, list[str]]:
    """Per set, the ids it shares with `train_ids` (the training shards' ids)."""
    by_id: dict[str, list[str]] = {}
    for s in sets:
        for i in s.ids:
            by_id.setdefault(i, []).append(s.name)
    shared: dict[str, list[str]] = {s.name: [] for s in sets}
    for i in train_ids:
        for name in by_id.get(i, ()):
            shared[name].append(i)
    return shared


__all__ = ["EvalSet", "EvalSetError", "KINDS", "load_eval_set", "overlap", "parse_spec"]
