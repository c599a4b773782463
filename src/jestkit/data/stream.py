"""Your own image-caption data as the training loop's source: WebDataset tar shards or Parquet
tables, streamed by jestkit.data.shards.ShardPool. `jestkit train` reads them in parallel
(jestkit.data.parallel.ParallelSource, built by ShardsConfig.parallel: streams split over ranks and
DataLoader workers); `StreamSource` is the one-process reader of one pool, for your own loops.

`StreamSource` is a DataSource (jestkit.data.source) of the streamed kind: `draw(B)` is the next
B good samples of the pool's shuffled stream (the loop's generator is not used), images through
the model's image transform, captions through its tokenizer. At the end of a pass the pool starts
its next epoch (reshuffled) and the draw continues there, so a super-batch is always B samples.

Resume: the source's state_dict() is the pool's (shard and record reached, the shuffle buffer's
raw records, its generator, the skip counters and the epoch's ids); the Trainer saves it in every
checkpoint and load_state_dict() continues at that sample boundary, so a resumed run draws
exactly the super-batches the uninterrupted one would.

A StreamSource under torchrun reads and decodes the *whole* stream on every rank (the pool is
built with rank 0 of 1): every rank draws the same super-batch and the loop shards it.
ParallelSource instead has each rank read only its own shards.

Tokenizers for our own dual encoder (`HashedWords`): captions from the web have no fixed
vocabulary, so a word's id is a hash of it (crc32, modulo the vocabulary size): no pass over the
data, the same ids on every run and machine, at the price of rare collisions.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from jestkit.data.shards import ShardPool, ShardPoolConfig, split_patterns
from jestkit.data.source import Examples
from jestkit.data.tokenizer import PAD, SPECIALS, tokenize


@dataclass
class ShardsConfig:
    """Your own data: WebDataset tar shards (img2dataset's layout) or Parquet tables.

    Attributes:
        pattern: the shards: a path, brace pattern ('data/{0000..0099}.tar', '{a,b}.tar'), glob,
            or several separated by commas (outside braces); an empty one is refused
        buffer_size: samples in the shuffle buffer (encoded; decoded when drawn)
        seed: the shuffle's seed (each epoch reshuffles from it), in [0, 2**64)
        max_bad_fraction: stop the run when more than this share of the samples read were bad
            (undecodable image, truncated shard; past 10 bad samples)
        decode_threads: threads decoding images in each reader (0: in its own thread)
        vocab_size: our dual encoder's word ids on shards (hashed words; open_clip models use
            their own tokenizer)
        max_sample_bytes: a sample whose files hold more bytes is bad (skipped and counted)
        max_caption_chars: a sample whose caption has more characters is bad
        max_image_pixels: a sample whose image has more pixels (width x height, from its header)
            is bad, never decoded
        workers: DataLoader worker processes per rank decoding the shards (0: the training
            process decodes); their positions are in every checkpoint (exact resume)
        streams: how many streams the shards are dealt to, split over ranks then workers; the
            super-batches depend on it, not on the ranks or workers (None: ranks x workers)
        shuffle_shards: each epoch, reshuffle the shard order (seed + epoch) before dealing it
        draft_side: decode the candidates no finer than they are scored (jestkit.data.draft):
            each JPEG candidate at the smallest libjpeg scale (1/2, 1/4, 1/8) whose shorter
            side stays >= this many pixels, then through the image transform as today (which
            resizes it back to the model's input); only the selected examples are decoded again
            in full for training, exactly as without it. auto: image_size x patch / scoring
            patch when the learner scores at a coarser --scoring.patch_size (and no reference
            model scores images in the loop), else none; none: every candidate in full
    """

    pattern: str | None = None
    buffer_size: int = 1000
    seed: int = 0
    max_bad_fraction: float = 0.01
    decode_threads: int = 0
    vocab_size: int = 8192
    max_sample_bytes: int = 32 << 20
    max_caption_chars: int = 16384
    max_image_pixels: int = 64_000_000
    workers: int = 0
    streams: int | None = None
    shuffle_shards: bool = True
    draft_side: int | Literal["auto", "none"] = "none"

    def __post_init__(self):
        if self.pattern is not None and not split_patterns(self.pattern):
            raise ValueError(f"--shards.pattern is empty ({self.pattern!r}): give the shards, or "
                             "leave the flag out to train on Fashion-MNIST")  # fmt: skip
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or \
                not 0 <= self.seed < 2**64:  # fmt: skip
            raise ValueError(f"--shards.seed must be an int in [0, 2**64), got {self.seed!r}")
        if self.vocab_size <= len(SPECIALS):
            raise ValueError(f"vocab_size must be > {len(SPECIALS)}, got {self.vocab_size}")
        self.pool_config()  # its checks, before any work
        if self.workers < 0:
            raise ValueError(f"--shards.workers must be >= 0, got {self.workers}")
        if self.streams is not None and self.streams < 1:
            raise ValueError(f"--shards.streams must be >= 1, got {self.streams}")
        d = self.draft_side
        if d not in ("auto", "none") and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise ValueError(f"--shards.draft_side must be auto, none or a number of pixels >= "
                             f"1, got {d!r}")  # fmt: skip

    def shards(self) -> list[str]:
        """The pattern's parts (separated by the commas outside braces)."""
        if not self.pattern:
            raise ValueError("no shards given (shards.pattern)")
        return split_patterns(self.pattern)

    def pool_config(self, mode: str | None = "RGB") -> ShardPoolConfig:
        """The ShardPoolConfig of these settings (which checks them)."""
        return ShardPoolConfig(
            buffer_size=self.buffer_size,
            seed=self.seed,
            mode=mode,
            max_bad_fraction=self.max_bad_fraction,
            decode_threads=self.decode_threads,
            max_sample_bytes=self.max_sample_bytes,
            max_caption_chars=self.max_caption_chars,
            max_image_pixels=self.max_image_pixels,
            rank=0,
            world_size=1,
        )

    def pool(self, transform: Callable | None, mode: str | None = "RGB") -> ShardPool:
        """The pool: every rank reads the whole stream (see the module docstring)."""
        return ShardPool(self.shards(), self.pool_config(mode), transform=transform)

    def parallel(self, transform: Callable, tokenize: Callable, rank: int = 0,
                 world_size: int = 1, group=None, pin_memory: bool = False,
                 snapshot_every: int = 1, mode: str | None = "RGB",
                 draft_side: int | None = None):  # fmt: skip
        """The parallel reader `jestkit train` uses (jestkit.data.parallel.ParallelSource);
        draft_side: the resolved number of pixels (jestkit.own.run.resolved_draft_side), None:
        every candidate decoded in full."""
        from jestkit.data.parallel import ParallelSource

        config = replace(self.pool_config(mode), shuffle_shards=self.shuffle_shards,
                         draft_side=draft_side)  # fmt: skip
        return ParallelSource(self.shards(), config, transform, tokenize, streams=self.streams,
                              workers=self.workers, rank=rank, world_size=world_size,
                              group=group, pin_memory=pin_memory,
                              snapshot_every=snapshot_every)  # fmt: skip


class HashedWords:
    """Captions -> (n, max_len) word ids for our text tower: jestkit's tokenize rule, each
    token's id 2 + crc32(token) % (vocab_size - 2) (0 pads, 1 is unused), truncated to max_len."""

    def __init__(self, vocab_size: int, max_len: int):
        self.vocab_size, self.max_len = vocab_size, max_len

    def ids(self, text: str) -> list[int]:
        n = self.vocab_size - len(SPECIALS)
        return [len(SPECIALS) + zlib.crc32(t.encode()) % n for t in tokenize(text)][: self.max_len]

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        out = torch.full((len(captions), self.max_len), PAD, dtype=torch.long)
        for i, caption in enumerate(captions):
            ids = self.ids(caption)
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class grayscale:  # noqa: N801 - used as the function it was: grayscale(28)(image)
    """Our ViT's image transform: a PIL image -> float (1, size, size) in [0, 1]. A class, so
    that it pickles into DataLoader workers started with spawn."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        image = image.convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)


class StreamSource:
    """A ShardPool as the loop's data source: draw(B) is the next B samples (see the module
    docstring). pool: its transform gives each image as the model's input tensor; tokenize:
    list of captions -> (n, L) token ids."""

    categories: dict[str, tuple[str, ...]] = {}  # no per-example metadata on your own data

    def __init__(self, pool: ShardPool, tokenize: Callable[[list[str]], torch.Tensor]):
        self.pool, self.tokenize = pool, tokenize
        self._batches = None
        self._size: int | None = None

    @property
    def shards(self) -> list[str]:
        return self.pool.shards

    def draw(self, size: int, generator: torch.Generator | None = None) -> Examples:
        """The next `size` samples of the stream (into the next epoch when this one ends)."""
        samples = None
        for _ in range(2):  # this epoch's rest, else the next epoch from its start
            if self._batches is None or self._size != size:
                self._batches, self._size = self.pool.super_batches(size, collate=None), size
            samples = next(self._batches, None)
            if samples is not None:
                break
            self._batches = None  # the pool has moved to its next epoch
        if samples is None:
            raise ValueError(
                f"the shards ({', '.join(self.pool.shards[:3])}"
                f"{', ...' if len(self.pool.shards) > 3 else ''}) hold fewer than {size} good "
                f"samples: one super-batch needs {size}; lower batch_size or filter_ratio"
            )
        images = torch.stack([s["image"] for s in samples])
        tokens = self.tokenize([s["caption"] for s in samples])
        return Examples([s["id"] for s in samples], images, tokens)

    @property
    def skipped(self) -> dict[str, int]:
        """Bad samples skipped so far: reason -> count."""
        return dict(self.pool.skipped)

    def state_dict(self) -> dict:
        return self.pool.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.pool.load_state_dict(state)
        self._batches = None
