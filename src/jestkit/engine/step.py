"""One training step, read top to bottom: draw -> score -> select -> train -> account.

Uniform draws b and scores nothing; the others draw B = b / (1 - filter_ratio), score them (the
learner through its scoring view, the reference from its cache), select b and train on them. Under
torchrun each rank scores its shard, all select alike, and each trains on b / world_size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from jestkit.data.source import Examples
from jestkit.dropin.distributed import all_gather_with_grad, average_gradients, rank_positions

if TYPE_CHECKING:
    from jestkit.engine.loop import Trainer


def train_step(t: Trainer) -> float:
    """One optimizer step of trainer `t`; returns the loss."""
    batch = t.source.draw(t.config.super_batch_size(), t.data_generator).to(t.device)  # draw
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
        positions = torch.arange(len(batch))
    chosen = batch[positions]
    t.model.train()  # train
    t.optimizer.zero_grad(set_to_none=True)
    loss = t.flops.run("train", forward_backward, t, my_share(chosen, positions, len(mine), t))
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
