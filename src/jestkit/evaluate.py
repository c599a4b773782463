"""Evaluation on the clean test set: zero-shot top-1 and image<->text recall@1."""

from __future__ import annotations

import torch

from jestkit.data.prepare import pixels
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


@torch.no_grad()
def evaluate(model: DualEncoder, test, test_tokens, prompt_tokens) -> dict[str, float]:
    """zero_shot: share of test images whose nearest class prompt is their class.
    i2t_r1 / t2i_r1: share of images (captions) whose nearest caption (image) is theirs. Many
    test captions are the same string, so a retrieved caption counts as correct when its text
    equals the true caption's (for t2i: when the retrieved image's caption equals the query)."""
    was_training = model.training
    model.eval()
    img, txt = encode(model, test.images, test_tokens)
    prompts = model.encode_text(prompt_tokens)
    zero_shot = (_top1(img, prompts) == test.labels).float().mean().item()
    # caption strings -> ids, so that "same text" is an integer comparison
    text_id = {}
    caption_ids = torch.tensor([text_id.setdefault(c, len(text_id)) for c in test.captions])
    i2t = (caption_ids[_top1(img, txt)] == caption_ids).float().mean().item()
    t2i = (caption_ids[_top1(txt, img)] == caption_ids).float().mean().item()
    model.train(was_training)
    return {"zero_shot": zero_shot, "i2t_r1": i2t, "t2i_r1": t2i}
