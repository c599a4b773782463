"""Everything the image-caption job reads, built once: pool, curated and test sets, the word
vocabulary, tokenised captions and class prompts, and a fingerprint of the pool's content."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from jestkit.cache import fingerprint_ids
from jestkit.data.captions import CaptionSet, PoolConfig, build_caption_data, class_prompts
from jestkit.data.fashion_mnist import load_fashion_mnist
from jestkit.data.tokenizer import Vocab

MAX_LEN = 16  # tokens per caption; the longest generated caption has 16


@dataclass
class CaptionData:
    pool: CaptionSet
    curated: CaptionSet
    test: CaptionSet
    vocab: Vocab
    pool_tokens: torch.Tensor  # (N_pool, MAX_LEN)
    curated_tokens: torch.Tensor
    test_tokens: torch.Tensor
    prompt_tokens: torch.Tensor  # (10, MAX_LEN), one zero-shot prompt per class
    fingerprint: str  # of the pool's ids, pixels, captions and vocabulary


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pool_fingerprint(pool: CaptionSet, vocab: Vocab) -> str:
    """Changes whenever any pool example's id, pixels or caption, or the vocabulary, changes."""
    captions = _sha("\n".join(pool.captions).encode())
    pixels = _sha(pool.images.contiguous().numpy().tobytes())
    return fingerprint_ids(pool.ids, pixels, captions, vocab.fingerprint())


def prepare_caption_data(
    config: PoolConfig, data_dir: str | None = None, limit: int | None = None
) -> CaptionData:
    """Load Fashion-MNIST and build the caption data. `limit` keeps the first `limit` train and
    test images (for quick tests); None uses all 60,000 + 10,000."""
    train_x, train_y = load_fashion_mnist("train", data_dir)
    test_x, test_y = load_fashion_mnist("test", data_dir)
    if limit is not None:
        train_x, train_y, test_x, test_y = (
            train_x[:limit],
            train_y[:limit],
            test_x[:limit],
            test_y[:limit],
        )
    pool, curated, test = build_caption_data(train_x, train_y, test_x, test_y, config)
    prompts = class_prompts()
    vocab = Vocab.build(pool.captions + curated.captions + prompts)
    return CaptionData(
        pool=pool,
        curated=curated,
        test=test,
        vocab=vocab,
        pool_tokens=vocab.encode(pool.captions, MAX_LEN),
        curated_tokens=vocab.encode(curated.captions, MAX_LEN),
        test_tokens=vocab.encode(test.captions, MAX_LEN),
        prompt_tokens=vocab.encode(prompts, MAX_LEN),
        fingerprint=pool_fingerprint(pool, vocab),
    )


def pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1], as the image tower takes them."""
    return images_uint8.unsqueeze(1).float().div_(255)
