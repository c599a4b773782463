"""The Fashion-MNIST caption pool as a data source the training loop draws from (in memory:
`draw` picks `size` distinct examples at random with the loop's generator)."""

from __future__ import annotations

import torch

from jestkit.data.source import Examples
from jestkit.fashion.captions import NOISE_TYPES, CaptionSet


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
