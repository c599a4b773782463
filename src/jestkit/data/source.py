"""Data sources: what the training loop draws its super-batches from.

The loop (jestkit.training.step) knows only this interface: a source has a length and draws a
super-batch of `size` examples with a generator, as `Examples` (the dual encoder's inputs, the
examples' ids, and optional per-example metadata such as noise labels). Fashion-MNIST captions
are one source (`CaptionSource`); shards on disk, a Parquet table or another image-caption set
plug in by implementing `__len__` and `draw`, without touching the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from jestkit.data.captions import NOISE_TYPES, CaptionSet


@dataclass
class Examples:
    """A batch of image-caption examples: row i of every field is example ids[i].

    images: float (n, C, H, W) pixels in [0, 1]; tokens: (n, L) word ids.
    meta: per-example categorical metadata, name -> int64 (n,) tensor of category indices into
    the source's `categories[name]` (e.g. 'noise': clean / mismatched / junk / duplicate).
    """

    ids: torch.Tensor
    images: torch.Tensor
    tokens: torch.Tensor
    meta: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: torch.Tensor | slice) -> Examples:
        """The examples at `index`, in that order."""
        return Examples(
            self.ids[index],
            self.images[index],
            self.tokens[index],
            {k: v[index] for k, v in self.meta.items()},
        )


class DataSource(Protocol):
    """What the training loop consumes."""

    categories: dict[str, tuple[str, ...]]  # the category names of each meta field

    def __len__(self) -> int: ...

    def draw(self, size: int, generator: torch.Generator) -> Examples:
        """`size` distinct examples drawn at random with `generator`."""
        ...


def pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1], as the image tower takes them."""
    return images_uint8.unsqueeze(1).float().div_(255)


class CaptionSource:
    """A CaptionSet and its tokenised captions as a data source, with its noise labels as meta."""

    categories = {"noise": NOISE_TYPES}

    def __init__(self, examples: CaptionSet, tokens: torch.Tensor):
        if len(tokens) != len(examples):
            raise ValueError(f"{len(tokens)} token rows for {len(examples)} examples")
        self.examples, self.tokens = examples, tokens

    def __len__(self) -> int:
        return len(self.examples)

    def draw(self, size: int, generator: torch.Generator) -> Examples:
        rows = torch.randperm(len(self), generator=generator)[:size]
        data = self.examples
        meta = {"noise": data.noise[rows]}
        return Examples(data.ids[rows], pixels(data.images[rows]), self.tokens[rows], meta)
