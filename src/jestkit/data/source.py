"""Data sources: what the training loop draws its super-batches from.

The loop (jestkit.engine.step) knows only this interface: a source draws a super-batch of
`size` examples with a generator, as `Examples` (the dual encoder's inputs, the examples' ids,
and optional per-example metadata such as noise labels). Two kinds of source:

* in memory (`jestkit.fashion.source.CaptionSource`, the Fashion-MNIST captions): a length,
  and `draw` picks `size` distinct examples at random with the loop's generator; the
  generator's state is all a checkpoint needs;
* streamed (`jestkit.data.stream.StreamSource`, WebDataset / Parquet shards): `draw` takes the
  next `size` samples of a shuffled stream, ignoring the generator (the stream has its own
  seeded one), and the source has `state_dict()` / `load_state_dict()`, which the loop saves in
  its checkpoints and restores on resume. It has no `__len__` (a stream's length is unknown).
  A streamed source may draw per rank (`per_rank = True`, jestkit.data.parallel.ParallelSource):
  under torchrun its draw(B) is this rank's B / world_size candidates, not the whole super-batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class Examples:
    """A batch of image-caption examples: row i of every field is example ids[i].

    ids: an int64 tensor, or a list of strings (a stream's sample ids: WebDataset keys, uids).
    images: float (n, C, H, W), the model's input; tokens: (n, L) token ids.
    meta: per-example categorical metadata, name -> int64 (n,) tensor of category indices into
    the source's `categories[name]` (e.g. 'noise': clean / mismatched / junk / duplicate).
    """

    ids: torch.Tensor | list[str]
    images: torch.Tensor
    tokens: torch.Tensor
    meta: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: torch.Tensor | slice) -> Examples:
        """The examples at `index`, in that order."""
        def at(t: torch.Tensor) -> torch.Tensor:  # ids and meta stay on the CPU on a GPU run
            return t[index if isinstance(index, slice) else index.to(t.device)]

        ids = self.ids
        if isinstance(ids, list):
            ids = ids[index] if isinstance(index, slice) else [ids[i] for i in index.tolist()]
        else:
            ids = at(ids)
        return Examples(
            ids, at(self.images), at(self.tokens), {k: at(v) for k, v in self.meta.items()}
        )


    def to(self, device: torch.device | str) -> Examples:
        """The same examples with their tensors on `device` (ids stay where they are)."""
        return Examples(
            self.ids,
            self.images.to(device, non_blocking=True),
            self.tokens.to(device, non_blocking=True),
            self.meta,
        )


class DataSource(Protocol):
    """What the training loop consumes (see the module docstring for the two kinds)."""

    categories: dict[str, tuple[str, ...]]  # the category names of each meta field

    def draw(self, size: int, generator: torch.Generator) -> Examples:
        """`size` distinct examples: drawn at random with `generator` (in memory), or the next
        `size` of the stream (streamed: state_dict()/load_state_dict() hold its position)."""
        ...
