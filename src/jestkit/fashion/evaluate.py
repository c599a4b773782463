"""Evaluation on the clean test set: zero-shot top-1 and image<->text recall@1."""

from __future__ import annotations

from collections.abc import Callable

import torch

from jestkit.data.tokenizer import tokenize
from jestkit.fashion.captions import ATTRIBUTE_WORDS, ATTRIBUTES
from jestkit.fashion.prepare import CaptionData
from jestkit.fashion.source import pixels
from jestkit.models.dual import DualEncoder


@torch.no_grad()
def encode(model: DualEncoder, images, tokens, batch_size: int = 1000):
    img = torch.cat(
        [
            model.encode_image(pixels(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
    )
    txt = torch.cat(
        [model.encode_text(tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)]
    )
    return img, txt


def _top1(queries: torch.Tensor, keys: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat(
        [
            (queries[i : i + batch_size] @ keys.T).argmax(1)
            for i in range(0, len(queries), batch_size)
        ]
    )


def attribute_masks(captions: list[str]) -> torch.Tensor:
    """Per caption, a bit mask of the attribute words it names (bit 3 * attribute + level)."""
    bit = {
        w: 3 * a + lv
        for a, name in enumerate(ATTRIBUTES)
        for lv, w in enumerate(ATTRIBUTE_WORDS[name])
    }
    return torch.tensor([sum(1 << bit[t] for t in set(tokenize(c)) if t in bit) for c in captions])


def level_masks(levels: torch.Tensor) -> torch.Tensor:
    """Per image, the bit mask of its six true attribute words."""
    bits = 3 * torch.arange(levels.shape[1]) + levels
    return (1 << bits).sum(1)


def consistent(caption_mask, caption_label, image_mask, image_label) -> torch.Tensor:
    """A caption fits an image when it names the image's class and only attribute words that
    are true of the image."""
    return (caption_label == image_label) & ((caption_mask & ~image_mask) == 0)


@torch.no_grad()
def evaluate(model: DualEncoder, test, test_tokens, prompt_tokens) -> dict[str, float]:
    """zero_shot: share of test images whose nearest class prompt is their class.
    i2t_r1: share of test images whose nearest test caption fits them; t2i_r1: share of test
    captions whose nearest test image they fit. A caption names the class and 1-3 of six
    attribute words in one of 13 templates, so many captions fit one image; a caption "fits" an
    image when it names the image's class and only attribute words true of it (test.levels)."""
    was_training = model.training
    model.eval()
    img, txt = encode(model, test.images, test_tokens)
    prompts = model.encode_text(prompt_tokens)
    zero_shot = (_top1(img, prompts) == test.labels).float().mean().item()
    cap_mask, img_mask = attribute_masks(test.captions), level_masks(test.levels)
    labels = test.labels
    nearest_caption, nearest_image = _top1(img, txt), _top1(txt, img)
    i2t = consistent(cap_mask[nearest_caption], labels[nearest_caption], img_mask, labels)
    t2i = consistent(cap_mask, labels, img_mask[nearest_image], labels[nearest_image])
    model.train(was_training)
    return {
        "zero_shot": zero_shot,
        "i2t_r1": i2t.float().mean().item(),
        "t2i_r1": t2i.float().mean().item(),
    }


def evaluator(data: CaptionData) -> Callable[[DualEncoder], dict[str, float]]:
    """model -> its metrics on data.test (what the training loop calls every eval_every steps)."""
    return lambda model: evaluate(model, data.test, data.test_tokens, data.prompt_tokens)
