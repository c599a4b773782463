"""One training step, read top to bottom: draw -> score -> select -> train -> account.

Uniform draws b and scores nothing; the others draw B = b / (1 - filter_ratio), score them (the
learner through its scoring view, the reference from its cache), select b and train on them. Under
torchrun each rank scores its shard, all select alike, and each trains on b / world_size. A source
that draws the whole super-batch on every rank (in memory) is sliced here; one that draws each
rank's own B / world_size (`per_rank`, jestkit.data.parallel) has its selected examples moved to
the ranks that train on them (jestkit.dropin.distributed.batch.moved_share: the same examples, in
the same order, as slicing the whole super-batch would give). Each part is timed as a phase
(jestkit.engine.timing); the data phase (draw, and the move to the device) is the step's data
wait. A source that drafts its candidates (jestkit.data.parallel: decoded no finer than they
are scored) has the selected ones decoded again in full after the selection (full_decode, timed
as data): the scores come from the drafted images, training from the full ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from jestkit.data.source import Examples
from jestkit.dropin.distributed import all_gather_with_grad, average_gradients
from jestkit.dropin.distributed.batch import moved_share, my_share, rank_slice

if TYPE_CHECKING:
    from jestkit.engine.loop import Trainer


def train_step(t: Trainer) -> float:
    """One optimizer step of trainer `t`; returns the loss. Each part is a phase of t.clock
    (jestkit.engine.timing)."""
    clock = t.clock
    with clock.phase("data"):  # draw (or take the super-batch drawn ahead)
        drawn = t.take_first_draw()
        if drawn is None:
            drawn = t.source.draw(t.config.super_batch_size(), t.data_generator)
        drawn = drawn.to(t.device)
        if getattr(t.source, "per_rank", False) and t.dist.world_size > 1:
            batch, mine = None, drawn  # this rank's B / world_size
        else:
            batch = drawn
            mine = rank_slice(batch, t.dist.rank, t.dist.world_size)
    learner = reference = None  # score
    if t.config.policy.uses_learner:
        with clock.phase("learner_score"), torch.autocast(t.device.type, torch.bfloat16,
                                                          t.config.scoring.bf16):  # fmt: skip
            learner = t.flops.run("learner_score", t.model.embeddings, mine.images, mine.tokens,
                                  t.config.scoring.view(), t.view_generator,
                                  t.config.scoring.chunk_rows(t.device))  # fmt: skip
    if t.config.policy.uses_reference:  # cached: no FLOPs; a reference model: its forward
        with clock.phase("reference_score"):
            reference = t.flops.run("reference_score", t.reference, mine)
    with clock.phase("select"):  # select
        if t.config.policy.scored:
            positions = t.selector(learner, reference)
        else:
            positions = torch.arange(len(mine) * t.dist.world_size)
        rank, world = t.dist.rank, t.dist.world_size
    if getattr(t.source, "drafted", False):  # the selected candidates decoded again in full
        with clock.phase("data"):
            held = (batch, 0) if batch is not None else (mine, rank)  # what the source drew
            full_decode(t.source, *held, positions)
    with clock.phase("select"):
        if batch is not None:
            chosen = batch[positions]
            share = my_share(chosen, positions, len(mine), rank, world)
        else:
            chosen, share = moved_share(mine, positions, rank, world, t.dist.group)
    with clock.phase("forward_backward"):  # train
        t.model.train()
        t.optimizer.zero_grad(set_to_none=True)
        loss = t.flops.run("train", forward_backward, t, share)
        if t.dist.world_size > 1:
            average_gradients(t.model, t.dist.group)
    with clock.phase("optimizer"):
        t.optimizer.step()
        t.scheduler.step()
    with clock.phase("account"):  # account
        t.stats.add(chosen)
        t.step += 1
        return loss.item()


def full_decode(source, mine: Examples, rank: int, positions: torch.Tensor) -> None:
    """Replace, in place, the drafted images of the selected candidates this rank drew (the
    positions in its block of the super-batch) by their full decode (source.decode_full): the
    sub-batch then trains on exactly the tensors an undrafted run gives them. The scores were
    taken already; the rows not selected keep their drafted images and are dropped."""
    n = len(mine)
    positions = positions.cpu()
    local = positions[(positions >= rank * n) & (positions < (rank + 1) * n)] - rank * n
    rows, full = source.decode_full(local.tolist())  # the drafted ones (the rest are exact)
    if rows:
        rows = torch.tensor(rows, device=mine.images.device)
        mine.images[rows] = full.to(mine.images.device, mine.images.dtype)


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
