"""Small image-caption shards the tests write themselves, in img2dataset's WebDataset layout
(KEY.png + KEY.txt + KEY.json with a 32-hex-digit uid): each image is a coloured shape on a
noisy background and its caption names the colour and the shape, so a model can learn them."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220),
           "yellow": (230, 220, 40)}  # fmt: skip
SHAPES = ("square", "stripe", "dot")


# a two-layer open_clip SigLIP config small enough for tests and the own-data benchmark
TINY_SIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    "init_logit_scale": math.log(10.0),
    "init_logit_bias": -10.0,
}


def add_sample(tar: tarfile.TarFile, key: str, files: dict[str, bytes]) -> None:
    """One WebDataset sample: a member KEY.EXT for each of `files` (extension -> bytes)."""
    for ext, data in files.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def is_noisy(i: int) -> bool:
    """Whether sample i of a noisy pool has a wrong caption: 2 of every 5."""
    return i % 5 in (1, 3)


def sample(i: int, rng: np.random.Generator, size: int = 32, noisy: bool = False
           ) -> tuple[bytes, str]:  # fmt: skip
    """A PNG of size x size pixels and its caption (naming another colour and shape when
    noisy and is_noisy(i))."""
    name = list(COLOURS)[i % len(COLOURS)]
    shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)]
    pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    q = size // 4
    region = {"square": (slice(q, 3 * q), slice(q, 3 * q)),
              "stripe": (slice(0, size), slice(q + q // 2, 2 * q + q // 2)),
              "dot": (slice(size // 2 - 3, size // 2 + 3), slice(size // 2 - 3, size // 2 + 3))}
    pixels[region[shape]] = COLOURS[name]
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    if noisy and is_noisy(i):
        name = list(COLOURS)[(i + 1 + i // 7) % len(COLOURS)]
        shape = SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]
    return png.getvalue(), f"a {name} {shape} number {i}"


def write_shards(folder: str | Path, shards: int = 2, per_shard: int = 64, seed: int = 0,
                 size: int = 32, bad: tuple[int, ...] = (), noisy: bool = False,
                 first: int = 0, uids: bool = True) -> str:  # fmt: skip
    """Write shards-0000.tar ...; returns their brace pattern. Samples numbered in `bad` get
    bytes that are not an image; noisy: wrong captions (is_noisy); first: the first sample's
    number (its uid); uids False: plain img2dataset shards, whose json has no uid (the ids are
    the keys)."""
    def files(n: int, rng: np.random.Generator) -> dict[str, bytes]:
        png, caption = sample(n, rng, size, noisy)
        png = b"not a png" if n in bad else png
        meta = {"uid": f"{n:032x}"} if uids else {"key": f"{n:08d}", "status": "success"}
        return {"png": png, "txt": caption.encode(), "json": json.dumps(meta).encode()}

    return write_numbered_shards(folder, shards, per_shard, seed, first, files)


def write_numbered_shards(folder: str | Path, shards: int, per_shard: int, seed: int, first: int,
                          files) -> str:  # fmt: skip
    """Write shards-0000.tar ... of samples numbered from `first`, sample n's members
    files(n, rng) (extension -> bytes) under the key n, one rng seeded `seed` drawn in order;
    returns their brace pattern."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for s in range(shards):
        with tarfile.open(folder / f"shards-{s:04d}.tar", "w") as tar:
            for i in range(per_shard):
                n = first + s * per_shard + i
                add_sample(tar, f"{n:08d}", files(n, rng))
    return str(folder / f"shards-{{0000..{shards - 1:04d}}}.tar")


CLASSES = [f"{c} {s}" for s in SHAPES for c in COLOURS]  # class index i: sample(i) draws it
TEMPLATES = ("a {c}", "a photo of a {c}", "a {c} number")


def class_of(i: int) -> int:
    """The class index (into CLASSES) of sample i's clean caption."""
    return (i // len(COLOURS)) % len(SHAPES) * len(COLOURS) + i % len(COLOURS)


def write_eval_set(folder: str | Path, kind: str, shards: int = 1, per_shard: int = 48,
                   first: int = 10**7, seed: int = 5, captions: int = 2) -> str:  # fmt: skip
    """A held-out set in clip_benchmark's WebDataset layout (test/N.tar, test/nshards.txt, and
    classnames.txt + zeroshot_classification_templates.txt, or dataset_type.txt 'retrieval'),
    of clean samples numbered from `first` (their uids); retrieval: `captions` captions per
    image, one per line. Returns the folder."""
    folder = Path(folder)
    (folder / "test").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for s in range(shards):
        with tarfile.open(folder / "test" / f"{s}.tar", "w") as tar:
            for i in range(per_shard):
                n = first + s * per_shard + i
                png, caption = sample(n, rng)
                files = {"png": png, "json": json.dumps({"uid": f"{n:032x}"}).encode()}
                if kind == "zeroshot":
                    files["cls"] = str(class_of(n)).encode()
                else:
                    lines = [caption, f"{CLASSES[class_of(n)]} picture {n}"][:captions]
                    files["txt"] = "\n".join(lines).encode()
                add_sample(tar, f"s{n:08d}", files)
    return write_eval_layout(folder, kind, shards, CLASSES, TEMPLATES)


def write_eval_layout(folder: Path, kind: str, shards: int, classes, templates) -> str:
    """The files beside a held-out set's test/N.tar in clip_benchmark's layout: nshards.txt,
    and classnames.txt + zeroshot_classification_templates.txt (zero-shot) or dataset_type.txt
    'retrieval'. Returns the folder."""
    (folder / "test" / "nshards.txt").write_text(f"{shards}\n")
    if kind == "zeroshot":
        (folder / "classnames.txt").write_text("\n".join(classes) + "\n")
        (folder / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    else:
        (folder / "dataset_type.txt").write_text("retrieval\n")
    return str(folder)
