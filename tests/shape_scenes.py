"""A richer synthetic image-caption pool than shard_files.py's, for the own-data benchmark:
JPEG scenes (64 x 64 px, quality 90, larger than the tiny model's 32 x 32 input, so that
decoding at the scored resolution can be measured on it) of one shape, and a caption that names
everything the picture shows: "a red ring at the top left on a noisy grey background".

Sample i's scene is the mixed-radix digits of i: class (colour x shape) i % 30, then position
(i // 30) % 4, background (i // 120) % 3 and texture (i // 360) % 2, so any 30 consecutive
samples hold every class once and any 720 every caption once. A held-out retrieval set of 720
consecutive images therefore has 720 different captions (R@1 can reach 1), and a zero-shot set
of a multiple of 30 images is balanced. Noisy pools (is_noisy: 2 samples of 5, and 2 of 5 of
every class) get the caption of another colour, shape, position, background and texture. The
writers use
shard_files.py's layouts (img2dataset's WebDataset shards, clip_benchmark's held-out sets)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from shard_files import add_sample, write_eval_layout, write_numbered_shards

SIZE = 64  # stored pixels a side; the model's transform resizes them to its input
QUALITY = 90
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (40, 60, 230),
    "yellow": (235, 220, 40),
    "purple": (150, 40, 190),
    "orange": (245, 140, 20),
}
SHAPES = ("square", "disc", "ring", "cross", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
BACKGROUNDS = {"dark": 30, "grey": 120, "light": 210}  # mean grey level
TEXTURES = {"plain": 8, "noisy": 45}  # half-range of the grey noise around that mean
CLASSES = [f"{c} {s}" for s in SHAPES for c in COLOURS]  # class index k: colour k % 6
# zero-shot prompts written as the pool's captions are: the class in each of the 24 scenes
# (position, background, texture), averaged as clip_benchmark averages templates. Short prompts
# ("a red ring", "a photo of a red ring") are out of the distribution of a model that has only
# seen twelve-word captions: with them the own-data benchmark's top-1 fell from 600 to 1,200
# uniform steps while its retrieval R@1 rose.
TEMPLATES = tuple(f"a {{c}} at the {p} on a {t} {b} background"
                  for p in POSITIONS for b in BACKGROUNDS for t in TEXTURES)  # fmt: skip
PERIOD = len(CLASSES) * len(POSITIONS) * len(BACKGROUNDS) * len(TEXTURES)  # 720 captions
SIDE = 28  # the shape's box, pixels a side: nearly a quadrant, 2 x 2 patches of the model's input


def attributes(i: int) -> tuple[int, int, int, int]:
    """Sample i's (class, position, background, texture) indices: i's mixed-radix digits."""
    k, rest = i % len(CLASSES), i // len(CLASSES)
    position, rest = rest % len(POSITIONS), rest // len(POSITIONS)
    background, rest = rest % len(BACKGROUNDS), rest // len(BACKGROUNDS)
    return k, position, background, rest % len(TEXTURES)


def _words(k: int, position: int, background: int, texture: int) -> str:
    return (f"a {CLASSES[k]} at the {POSITIONS[position]} on a {list(TEXTURES)[texture]} "
            f"{list(BACKGROUNDS)[background]} background")  # fmt: skip


def is_noisy(i: int) -> bool:
    """Whether sample i of a noisy pool has a wrong caption: 2 of every 5, and 2 of every 5 of
    each class. shard_files.is_noisy (i % 5 in (1, 3)) would be a class's rule here: 30 classes
    repeat every 30 samples, so 12 classes would never have a right caption in the pool."""
    return (i + i // len(CLASSES)) % 5 in (1, 3)


def caption(i: int) -> str:
    """What sample i's picture shows, in words."""
    return _words(*attributes(i))


def wrong_caption(i: int) -> str:
    """A caption that gets colour, shape, position, background and texture of sample i wrong."""
    k, position, background, texture = attributes(i)
    colour = (k % len(COLOURS) + 1 + i // 7 % (len(COLOURS) - 1)) % len(COLOURS)
    shape = (k // len(COLOURS) + 1 + i // 11 % (len(SHAPES) - 1)) % len(SHAPES)
    return _words(shape * len(COLOURS) + colour, (position + 1 + i // 13 % 3) % len(POSITIONS),
                  (background + 1 + i // 17 % 2) % len(BACKGROUNDS), 1 - texture)  # fmt: skip


def scene(i: int, rng: np.random.Generator) -> bytes:
    """Sample i's picture as JPEG bytes: its shape, SIDE pixels a side, moved by up to 2 pixels
    from its quadrant's centre, on grey noise."""
    k, position, background, texture = attributes(i)
    mean, spread = list(BACKGROUNDS.values())[background], list(TEXTURES.values())[texture]
    grey = rng.integers(mean - spread, mean + spread + 1, (SIZE, SIZE), dtype=np.int16)
    image = Image.fromarray(np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
    half = SIZE // 2
    jitter = rng.integers(-2, 3, 2)
    cx = (position % 2) * half + half // 2 + int(jitter[0])
    cy = (position // 2) * half + half // 2 + int(jitter[1])
    r = SIDE // 2
    box = (cx - r, cy - r, cx + r - 1, cy + r - 1)
    fill = list(COLOURS.values())[k % len(COLOURS)]
    draw = ImageDraw.Draw(image)
    shape = SHAPES[k // len(COLOURS)]
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "disc":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=SIDE // 5)
    elif shape == "cross":
        w = SIDE // 6
        draw.rectangle((cx - w, box[1], cx + w - 1, box[3]), fill=fill)
        draw.rectangle((box[0], cy - w, box[2], cy + w - 1), fill=fill)
    else:
        draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def write_scene_shards(folder: str | Path, shards: int = 2, per_shard: int = 64, seed: int = 0,
                       noisy: bool = False, first: int = 0) -> str:  # fmt: skip
    """Write shards-0000.tar ... of scenes numbered from `first` (their uids), KEY.jpg +
    KEY.txt + KEY.json as img2dataset writes them; noisy: wrong captions (is_noisy). Returns
    their brace pattern."""
    def files(n: int, rng: np.random.Generator) -> dict[str, bytes]:
        text = wrong_caption(n) if noisy and is_noisy(n) else caption(n)
        return {"jpg": scene(n, rng), "txt": text.encode(),
                "json": json.dumps({"uid": f"{n:032x}"}).encode()}  # fmt: skip

    return write_numbered_shards(folder, shards, per_shard, seed, first, files)


def write_scene_eval_set(folder: str | Path, kind: str, images: int, first: int,
                         seed: int = 5) -> str:  # fmt: skip
    """A held-out set in clip_benchmark's WebDataset layout (test/0.tar, test/nshards.txt, and
    classnames.txt + zeroshot_classification_templates.txt, or dataset_type.txt 'retrieval')
    of `images` clean scenes numbered from `first`: zero-shot, each labelled with its class
    (colour and shape); retrieval, each with its one caption. Returns the folder."""
    if kind not in ("zeroshot", "retrieval"):
        raise ValueError(f"kind must be 'zeroshot' or 'retrieval', not {kind!r}")
    folder = Path(folder)
    (folder / "test").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with tarfile.open(folder / "test" / "0.tar", "w") as tar:
        for n in range(first, first + images):
            files = {"jpg": scene(n, rng), "json": json.dumps({"uid": f"{n:032x}"}).encode()}
            if kind == "zeroshot":
                files["cls"] = str(attributes(n)[0]).encode()
            else:
                files["txt"] = caption(n).encode()
            add_sample(tar, f"s{n:08d}", files)
    return write_eval_layout(folder, kind, 1, CLASSES, TEMPLATES)
