"""Candidates decoded no finer than they are scored (jestkit.data.draft): the DCT scale chosen,
and the selected examples' full decode equal to the pool's decode without drafting."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from shard_files import add_sample

from jestkit.data.draft import apply_draft, decode_image, draft_side
from jestkit.data.shards import ShardPool, ShardPoolConfig


def _jpeg(width: int, height: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx % 97, yy % 89, (xx + yy) % 83], -1) * 2 + rng.integers(0, 40, (1, 1, 3))
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, fmt)
    return out.getvalue()


def test_draft_side_is_the_image_size_over_the_patch_ratio():
    assert draft_side(224, 16, 32) == 112
    assert draft_side(224, 14, 56) == 56
    assert draft_side(225, 16, 32) == 113  # never below what the view needs
    assert draft_side(224, 16, None) is None and draft_side(224, 16, 16) is None


@pytest.mark.parametrize(
    "size, side, scale, decoded",
    [
        ((512, 384), 112, 2, (256, 192)),  # 1/4 would give 96 < 112
        ((512, 384), 90, 4, (128, 96)),
        ((512, 384), 40, 8, (64, 48)),
        ((501, 377), 40, 8, (63, 48)),  # libjpeg rounds up
        ((100, 100), 112, 1, (100, 100)),  # already no larger than needed
    ],
)
def test_apply_draft_takes_the_smallest_scale_still_covering_the_side(size, side, scale, decoded):
    with Image.open(io.BytesIO(_jpeg(*size))) as im:
        assert apply_draft(im, side) == scale
        im.load()
        assert im.size == decoded
        assert min(im.size) >= min(side, min(size))


def test_non_jpeg_images_are_decoded_in_full():
    with Image.open(io.BytesIO(_jpeg(256, 256, fmt="PNG"))) as im:
        assert apply_draft(im, 32) == 1
        im.load()
        assert im.size == (256, 256)


class SizeAndPixels:
    """A transform that records the size it was given, then resizes to 64 x 64 (a model input)."""

    def __init__(self):
        self.sizes = []

    def __call__(self, image):
        self.sizes.append(image.size)
        small = image.resize((64, 64), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(small, dtype=np.float32)).permute(2, 0, 1) / 255


def test_pool_drafts_candidates_and_decodes_the_selected_exactly_as_before(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(6):
            files = {"jpg": _jpeg(320 + 8 * i, 256, seed=i), "txt": f"photo {i}".encode(),
                     "json": json.dumps({"uid": f"{i:032x}"}).encode()}  # fmt: skip
            add_sample(tar, f"{i:04d}", files)
    config = ShardPoolConfig(buffer_size=4, seed=1, rank=0, world_size=1)
    full_tf, draft_tf = SizeAndPixels(), SizeAndPixels()
    plain = ShardPool(str(path), config, transform=full_tf).take(6)
    drafted_pool = ShardPool(str(path), ShardPoolConfig(**{**config.__dict__, "draft_side": 64}),
                             transform=draft_tf)  # fmt: skip
    drafted = drafted_pool.take(6)
    assert [s["id"] for s in drafted] == [s["id"] for s in plain]  # the same stream
    assert all(min(size) == 64 for size in draft_tf.sizes)  # 256 / 4: what the view needs
    assert all(size[1] == 256 for size in full_tf.sizes)
    for d, p in zip(drafted, plain, strict=True):
        assert not torch.equal(d["image"], p["image"])  # the scoring view is coarser
        assert torch.equal(drafted_pool.decode_full(d["raw"]), p["image"])  # training: as before
    assert torch.equal(decode_image(drafted[0]["raw"], "RGB", full_tf), plain[0]["image"])


def test_draft_side_must_be_positive():
    with pytest.raises(ValueError, match="draft_side"):
        ShardPoolConfig(draft_side=0)
