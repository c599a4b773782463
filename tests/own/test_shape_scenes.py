"""The own-data benchmark's scenes (tests/shape_scenes.py): each caption names what its JPEG
shows (colour, shape, position, size, background, read back from the decoded pixels), classes
are balanced and every held-out retrieval caption is different, noisy captions are wrong in
every attribute, and jestkit's shard and held-out readers take the JPEG files, whose ids do not
overlap the pool's."""

from __future__ import annotations

import importlib.util
import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import shape_scenes as ss
from PIL import Image

from jestkit.data.shards import ShardPoolConfig, read_ids
from jestkit.own.evalsets import load_eval_set

ROOT = Path(__file__).resolve().parents[2]
_CAPTION = re.compile(r"a (\w+) (\w+) at the (\w+ \w+) on a (\w+) (\w+) background")


def _parse(text: str) -> tuple[str, str, str, str, str]:
    """(colour, shape, position, texture, background) of a caption."""
    match = _CAPTION.fullmatch(text)
    assert match, text
    return match.groups()


def _read(i: int, rng: np.random.Generator) -> tuple[str, str, str, str, str]:
    """What scene i's decoded pixels show: the shape is the set of pixels far from grey (the
    background is grey noise); its colour, quadrant, fill, centre and bottom row say the rest,
    the other pixels' mean and spread the background and its texture."""
    image = Image.open(io.BytesIO(ss.scene(i, rng)))
    assert image.format == "JPEG" and image.size == (ss.SIZE, ss.SIZE)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    mask = pixels.max(axis=2) - pixels.min(axis=2) > 60
    ys, xs = np.nonzero(mask)
    grey = pixels[~mask].mean(axis=1)
    background = min(ss.BACKGROUNDS, key=lambda b: abs(ss.BACKGROUNDS[b] - grey.mean()))
    texture = "noisy" if grey.std() > 15 else "plain"
    colour = min(ss.COLOURS, key=lambda c: np.abs(pixels[mask].mean(axis=0) - ss.COLOURS[c]).sum())
    half = ss.SIZE // 2
    position = ss.POSITIONS[int(ys.mean() >= half) * 2 + int(xs.mean() >= half)]
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert height <= half and width <= half  # inside its quadrant
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    fill = mask.sum() / (height * width)  # share of the bounding box the shape covers
    if not mask[cy - 1 : cy + 2, cx - 1 : cx + 2].any():
        shape = "ring"  # hollow in the middle
    elif fill > 0.86:
        shape = "square"
    elif mask[ys.max() - 1].sum() > 0.75 * width:
        shape = "triangle"  # not a square, but as wide as its box at the bottom
    elif fill > 0.65:
        shape = "disc"
    else:
        shape = "cross"
    return colour, shape, position, texture, background


def test_each_caption_names_what_its_picture_shows():
    rng = np.random.default_rng(0)
    for i in range(0, 2 * ss.PERIOD, 7):
        assert _read(i, rng) == _parse(ss.caption(i)), i


def test_classes_are_balanced_and_held_out_captions_unique():
    assert len(ss.CLASSES) == 30 and ss.PERIOD == 720
    for first in (0, 10**7, 2 * 10**7 + 13):
        assert Counter(ss.attributes(i)[0] for i in range(first, first + 1200)) == \
            dict.fromkeys(range(30), 40)  # fmt: skip
        assert len({ss.caption(i) for i in range(first, first + ss.PERIOD)}) == ss.PERIOD
    # the class index is the colour-shape name the caption says
    for i in range(60):
        colour, shape, *_ = _parse(ss.caption(i))
        assert ss.CLASSES[ss.attributes(i)[0]] == f"{colour} {shape}" and shape in ss.SHAPES


def test_wrong_captions_are_wrong_in_every_attribute():
    for i in range(3 * ss.PERIOD):
        right, wrong = _parse(ss.caption(i)), _parse(ss.wrong_caption(i))
        assert all(a != b for a, b in zip(right, wrong, strict=True)), (i, right, wrong)


def test_noise_is_two_in_five_of_every_class():
    for first in (0, 10**6 + 7):
        counts = Counter(ss.attributes(i)[0] for i in range(first, first + 1500)
                         if ss.is_noisy(i))  # fmt: skip
        assert counts == dict.fromkeys(range(30), 20)  # 50 samples of each class, 20 noisy
    assert sum(ss.is_noisy(i) for i in range(1000)) == 400


def test_jestkit_reads_the_jpeg_shards_and_held_out_sets(tmp_path):
    pool = ss.write_scene_shards(tmp_path / "pool", shards=2, per_shard=50, noisy=True)
    ids = list(read_ids(pool, ShardPoolConfig()))
    assert ids == [f"{n:032x}" for n in range(100)]
    with open(tmp_path / "pool" / "shards-0000.tar", "rb") as f:
        assert b"00000000.jpg" in f.read()
    zeroshot = load_eval_set(ss.write_scene_eval_set(tmp_path / "shapes", "zeroshot", 60,
                                                  first=10**7), "zeroshot")  # fmt: skip
    assert zeroshot.classnames == ss.CLASSES and len(zeroshot) == 60
    assert Counter(zeroshot.labels) == dict.fromkeys(range(30), 2)
    retrieval = load_eval_set(ss.write_scene_eval_set(tmp_path / "captions", "retrieval", 40,
                                                   first=2 * 10**7), "retrieval")  # fmt: skip
    assert len(retrieval) == 40 and len({c for cs in retrieval.captions for c in cs}) == 40
    assert not set(ids) & set(zeroshot.ids) and not set(ids) & set(retrieval.ids)
    with pytest.raises(ValueError, match="kind"):
        ss.write_scene_eval_set(tmp_path / "x", "detection", 10, first=0)


def test_the_benchmarks_held_out_ids_do_not_overlap_its_shards(tmp_path):
    """own_data.write_data's sets: 1,200 zero-shot images (40 a class), 720 retrieval images
    with 720 different captions, and no held-out id in the pool or the curated shards."""
    spec = importlib.util.spec_from_file_location("own_data", ROOT / "benchmarks" / "own_data.py")
    own_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(own_data)
    data = own_data.write_data(tmp_path, pool=1000, curated=100)
    trained = set(read_ids(data["pool"])) | set(read_ids(data["curated"]))
    assert len(trained) == 1100
    zeroshot = load_eval_set(data["shapes"], "zeroshot")
    retrieval = load_eval_set(data["captions"], "retrieval")
    assert len(zeroshot) == 1200 and Counter(zeroshot.labels) == dict.fromkeys(range(30), 40)
    assert len(retrieval) == 720 and len({c for cs in retrieval.captions for c in cs}) == 720
    assert not trained & (set(zeroshot.ids) | set(retrieval.ids))
