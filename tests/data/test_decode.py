"""decode_image: JPEGs through simplejpeg give Pillow's pixels (the same libjpeg-turbo; the
upsampling may differ by a level or two), other formats go through Pillow unchanged, and a
damaged JPEG still raises (a bad sample)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jestkit.data.shards import ShardPool, decode_image


def _jpeg(mode: str = "RGB", quality: int = 90) -> bytes:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    pixels = np.stack([xx * 2, yy * 2, (xx + yy)], -1) + rng.integers(0, 20, (96, 128, 3))
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert(mode)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_jpeg_decodes_to_pillows_pixels(mode):
    data = _jpeg()
    fast = np.asarray(decode_image(data, mode), dtype=np.int16)
    with Image.open(io.BytesIO(data)) as im:
        slow = np.asarray(im.convert(mode), dtype=np.int16)
    assert fast.shape == slow.shape == ((96, 128, 3) if mode == "RGB" else (96, 128))
    assert np.abs(fast - slow).max() <= 3 and np.abs(fast - slow).mean() < 0.5
    assert decode_image(data, mode).mode == mode
    pillow = np.asarray(decode_image(data, mode, fast_jpeg=False), dtype=np.int16)
    assert np.array_equal(pillow, slow)


def test_other_images_and_modes_go_through_pillow():
    grey = _jpeg("L")
    assert np.array_equal(np.asarray(decode_image(grey, None)),
                          np.asarray(Image.open(io.BytesIO(grey))))  # fmt: skip
    png = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(png, "PNG")
    assert np.array_equal(np.asarray(decode_image(png.getvalue(), "L")),
                          np.arange(64).reshape(8, 8))  # fmt: skip


def test_a_damaged_jpeg_is_a_bad_sample(tmp_path):
    import json
    import tarfile

    data = _jpeg()
    cut = data[: len(data) // 2]
    with pytest.raises(Exception):  # noqa: B017 - whatever Pillow raises
        decode_image(cut, "RGB")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for key, jpg in (("a", data), ("b", cut)):
            meta = json.dumps({"uid": key}).encode()
            for ext, payload in (("jpg", jpg), ("txt", b"x"), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    pool = ShardPool(str(tmp_path / "s.tar"), buffer_size=0)
    assert [s["id"] for s in pool] == ["a"] and pool.skipped == {"undecodable image": 1}
