"""One training step, read top to bottom: draw -> score -> select -> train -> account.

Uniform draws b and scores nothing; the others draw B = b / (1 - filter_ratio), score them (the
learner through its scoring view, the reference from its cache), select b and train on them. Under
torchrun each rank scores its shard, all select alike, and each trains on b / world_size. A source
that draws the whole super-batch on every rank (in memory) is sliced here; one that draws each
rank's own B / world_size (`per_rank`, jestkit.data.parallel) has its selected examples moved to
the ranks that train on them (redistribute: the same examples, in the same order, as slicing the
whole super-batch would give). The time spent in draw is the step's data wait.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from jestkit.data.source import Examples
from jestkit.dropin.distributed import (
    all_gather_with_grad,
    average_gradients,
    rank_positions,
    redistribute,
)

if TYPE_CHECKING:
    from jestkit.engine.loop import Trainer


def draw(t: Trainer) -> tuple[Examples, float]:
    """The next super-batch (this rank's share of it, for a per-rank source) and the seconds
    spent waiting for it."""
    start = time.perf_counter()
    drawn = t.source.draw(t.config.super_batch_size(), t.data_generator)
    return drawn, time.perf_counter() - start


def train_step(t: Trainer) -> float:
    """One optimizer step of trainer `t`; returns the loss."""
    drawn, wait = t.take_first_draw() or draw(t)  # draw
    t.data_wait.append(wait)
    drawn = drawn.to(t.device)
    if getattr(t.source, "per_rank", False) and t.dist.world_size > 1:
        batch, mine = None, drawn  # this rank's B / world_size
    else:
        batch = drawn
        mine = shard(batch, t.dist.rank, t.dist.world_size)
    learner = reference = None  # score
    if t.config.policy.uses_learner:
        with torch.autocast(t.device.type, torch.bfloat16, t.config.scoring.bf16):
            learner = t.flops.run("learner_score", t.model.embeddings, mine.images, mine.tokens,
                                  t.config.scoring.view(), t.view_generator)  # fmt: skip
    if t.config.policy.uses_reference:  # cached: no FLOPs; a reference model: its forward
        reference = t.flops.run("reference_score", t.reference, mine)
    if t.config.policy.scored:  # select
        positions = t.selector(learner, reference)
    else:
        positions = torch.arange(len(mine) * t.dist.world_size)
    if batch is not None:
        chosen = batch[positions]
        share = my_share(chosen, positions, len(mine), t)
    else:
        chosen, share = moved_share(mine, positions, t)
    t.model.train()  # train
    t.optimizer.zero_grad(set_to_none=True)
    loss = t.flops.run("train", forward_backward, t, share)
    if t.dist.world_size > 1:
        average_gradients(t.model, t.dist.group)
    t.optimizer.step()
    t.scheduler.step()
    t.stats.add(chosen)  # account
    t.step += 1
    return loss.item()


def shard(batch: Examples, rank: int, world_size: int) -> Examples:
    """This rank's B / world_size candidates (all of them on one process)."""
    n = len(batch) // world_size
    return batch if world_size == 1 else batch[slice(rank * n, (rank + 1) * n)]


def my_share(chosen: Examples, positions: torch.Tensor, n: int, t: Trainer) -> Examples:
    """The selected examples this rank trains on: b / world_size of them (all on one process)."""
    if t.dist.world_size == 1:
        return chosen
    return chosen[rank_positions(positions, n, t.dist.rank, t.dist.world_size)]


def moved_share(mine: Examples, positions: torch.Tensor, t: Trainer
                ) -> tuple[Examples, Examples]:  # fmt: skip
    """From each rank's own candidates: the whole selection's ids and metadata (every rank's,
    in selection order: what the stats count), and this rank's b / world_size selected
    examples moved from the ranks that drew them (the rows my_share would give)."""
    group, W = t.dist.group, t.dist.world_size
    here = redistribute({"images": mine.images, "tokens": mine.tokens},
                        positions.to(mine.images.device), group)  # fmt: skip
    ids = mine.ids if isinstance(mine.ids, list) else mine.ids.tolist()
    parts = [None] * W  # the ids and metadata are small: every rank's, to every rank
    dist.all_gather_object(parts, (ids, {k: v.cpu() for k, v in mine.meta.items()}), group=group)
    every_ids = [i for p in parts for i in p[0]]
    every_meta = {k: torch.cat([p[1][k] for p in parts]) for k in mine.meta}

    def pick(index: list[int]) -> tuple[list | torch.Tensor, dict[str, torch.Tensor]]:
        picked = [every_ids[i] for i in index]
        if not isinstance(mine.ids, list):
            picked = torch.tensor(picked, dtype=mine.ids.dtype)
        return picked, {k: v[index] for k, v in every_meta.items()}

    selected = positions.tolist()
    rows = rank_positions(positions.cpu(), len(mine), t.dist.rank, W).tolist()
    chosen_ids, chosen_meta = pick(selected)
    chosen = Examples(chosen_ids, mine.images[:0], mine.tokens[:0], chosen_meta)
    ours_ids, ours_meta = pick([selected[r] for r in rows])
    return chosen, Examples(ours_ids, here["images"], here["tokens"], ours_meta)


def forward_backward(t: Trainer, batch: Examples) -> torch.Tensor:
    """The contrastive loss over the whole sub-batch (every rank's pairs), back-propagated."""
    s = t.config.scoring
    with torch.autocast(t.device.type, torch.bfloat16, t.autocast):
        if s.multires_fraction > 0:
            img = t.model.encode_image_multires(batch.images, s.patch_size, s.multires_fraction)
        else:
            img = t.model.encode_image(batch.images)
        txt = t.model.encode_text(batch.tokens)
    img, txt = img.float(), txt.float()  # the loss in float32 (no-ops without autocast)
    if t.dist.world_size > 1:  # every rank's pairs as negatives
        img, txt = all_gather_with_grad(img, t.dist.group), all_gather_with_grad(txt, t.dist.group)
    loss = t.model.loss(img, txt)
    loss.backward()
    return loss.detach()
