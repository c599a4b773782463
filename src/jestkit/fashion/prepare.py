"""Everything the image-caption job reads, built once: pool, curated and test sets, the word
vocabulary, tokenised captions and class prompts, and a fingerprint of the pool's content."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from jestkit.data.tokenizer import Vocab
from jestkit.dropin.cache import fingerprint_ids
from jestkit.fashion.captions import CaptionSet, PoolConfig, build_caption_data, class_prompts
from jestkit.fashion.fashion_mnist import load_fashion_mnist
from jestkit.fashion.source import CaptionSource
from jestkit.models.factory import MAX_LEN


@dataclass
class CaptionData:
    """The image-caption job's data: pool (the learners' data), curated (the reference's), test."""

    pool: CaptionSet
    curated: CaptionSet
    test: CaptionSet
    vocab: Vocab
    pool_tokens: torch.Tensor  # (N_pool, MAX_LEN)
    curated_tokens: torch.Tensor
    test_tokens: torch.Tensor
    prompt_tokens: torch.Tensor  # (10, MAX_LEN), one zero-shot prompt per class
    fingerprint: str  # of the pool's ids, pixels, captions and vocabulary
    # the pool rows learners draw from (an offline filter's kept pairs, ascending); None: all.
    # The fingerprint stays the whole pool's: the reference's cache covers every row.
    kept: torch.Tensor | None = None

    def pool_source(self) -> CaptionSource:
        """The pool (only its kept rows, if filtered) as the training loop's data source."""
        if self.kept is None:
            return CaptionSource(self.pool, self.pool_tokens)
        return CaptionSource(self.pool.subset(self.kept), self.pool_tokens[self.kept])

    def kept_fingerprint(self) -> str | None:
        """A fingerprint of the kept rows' ids (None when unfiltered): a run on another filter
        of the same pool is another run."""
        if self.kept is None:
            return None
        return fingerprint_ids(self.pool.ids[self.kept])

    def curated_source(self) -> CaptionSource:
        """The curated set as the reference's data source."""
        return CaptionSource(self.curated, self.curated_tokens)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pool_fingerprint(pool: CaptionSet, vocab: Vocab) -> str:
    """Changes whenever any pool example's id, pixels or caption, or the vocabulary, changes."""
    captions = _sha("\n".join(pool.captions).encode())
    pixels = _sha(pool.images.contiguous().numpy().tobytes())
    return fingerprint_ids(pool.ids, pixels, captions, vocab.fingerprint())


def prepare_caption_data(config: PoolConfig) -> CaptionData:
    """Load Fashion-MNIST (from config.data_dir) and build the caption data. config.limit keeps
    the first `limit` train and test images (for quick runs); None uses all 60,000 + 10,000."""
    train_x, train_y = load_fashion_mnist("train", config.data_dir)
    test_x, test_y = load_fashion_mnist("test", config.data_dir)
    limit = config.limit
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
