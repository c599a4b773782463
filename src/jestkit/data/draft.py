"""Decode a candidate no finer than it is scored: libjpeg's DCT scaling through Pillow's draft.

Flexi-JEST scores the super-batch at a coarse view (a scoring patch p' larger than the model's
patch p: each token sees a p' x p' patch through the pseudo-inverse-resized patch embedding, a
least-squares 2x, 4x ... downsample of it). The view therefore needs the image at about
image_size * p / p' pixels on its shorter side, not at the model's full input resolution.

The scoring view with a draft side S (`draft_side`):

* a JPEG whose shorter side is larger than S is decoded by libjpeg at the smallest of the scales
  1/2, 1/4, 1/8 whose result still has a shorter side >= S (Pillow's `Image.draft`: the IDCT
  runs on 8/s x 8/s coefficients per block; entropy decoding is not reduced). The result is the
  decoder's own reduced image (each output pixel the scaled IDCT of its block's lowest
  frequencies), converted to the pool's mode;
* any other image (PNG, WebP, a JPEG already at most S on its shorter side) is decoded in full;
* then the user's transform runs on that image exactly as it runs on a full one: with a resize
  to the model's input it upsamples the drafted image back to image_size, so the scoring tensor
  has the model's input shape.

Only the selected examples are then decoded in full (`decode_image` without a draft side): the
training transform sees exactly the PIL image it sees without drafting. A transform that draws
random augmentations draws them again for the full decode: the trained view is not the scored
one, as with any random augmentation applied after selection.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

SCALES = (2, 4, 8)  # libjpeg's DCT scaling factors (Pillow's draft picks among them)


def draft_side(image_size: int, patch_size: int, scoring_patch_size: int | None) -> int | None:
    """The shorter side, in pixels, a scoring view at `scoring_patch_size` needs of an image fed
    to the model at image_size with patch patch_size: image_size * p / p' (None: no coarser view,
    decode in full)."""
    if scoring_patch_size is None or scoring_patch_size <= patch_size:
        return None
    return -(-image_size * patch_size // scoring_patch_size)  # ceil


def apply_draft(image, side: int) -> int:
    """Ask Pillow's JPEG decoder for the smallest DCT scale whose shorter side stays >= side;
    before load(). Returns the scale chosen (1: decoded in full, not a JPEG or already small)."""
    if getattr(image, "format", None) != "JPEG":
        return 1
    width, height = image.size
    scale = 1
    for s in SCALES:
        if min(-(-width // s), -(-height // s)) >= side:
            scale = s
    if scale > 1:  # Pillow takes the largest scale s with size // requested >= s
        image.draft(image.mode, (width // scale, height // scale))
    return scale


def decode_image(data: bytes, mode: str | None, transform: Callable[[Any], Any] | None,
                 side: int | None = None):  # fmt: skip
    """Bytes -> the transform's output of the image (drafted to `side` when given): the pool's
    decode of one image, for the selected examples' full decode (side None)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if side is not None:
            apply_draft(im, side)
        im.load()
        image = im.convert(mode) if mode else im.copy()
    return transform(image) if transform is not None else image


__all__ = ["apply_draft", "decode_image", "draft_side"]
