"""A reference model without a curated data set: RHO-LOSS's held-out recipes.

JEST and RHO-LOSS want a reference trained on clean data. A user without a curated set can
train it on part of their own (noisy) data instead (Mindermann et al., ICML 2022, section 4):

* holdout: set aside a random share of the training data, train the reference on it, and train
  the learner on the rest; every learner example is scored by a model that never saw it.
  `holdout_reference_losses` does all three and returns the learner's indices with their
  reference losses.
* two halves (no holdout: all data is trained on): split the data in two halves, train one
  reference on each, and score every example with the model trained on the *other* half.
  `two_halves_reference_losses` returns a reference loss for every example.

The losses are indexed like the dataset; write them into a jestkit ReferenceCache keyed by
example id (`build_cache(path, ids, lambda i: {"loss": losses[...]}, meta)`) or look them up
directly in the scoring callable (`reference=lambda x, y, idx: losses[idx]`).

`loss_fn(model, batch) -> (B,) per-example losses` is the one contract: the same function
trains the reference (its mean) and scores examples (under torch.no_grad()).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from jestkit.dropin.loader import call_scorer

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class ReferenceTraining:
    """How the reference is trained: AdamW on mean per-example loss, a fixed number of epochs."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    score_batch_size: int = 1024


def split_holdout(
    n: int, holdout: float | int = 0.1, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_indices, holdout_indices): a random split of range(n).

    holdout: a share in (0, 1) of the n examples, or a count (int >= 1).
    """
    if isinstance(holdout, float):
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout as a share must be in (0, 1), got {holdout}")
        k = round(holdout * n)
    else:
        k = int(holdout)
    if not 1 <= k < n:
        raise ValueError(f"holdout must leave both parts non-empty: {k} of {n} examples")
    perm = torch.randperm(n, generator=generator)
    return perm[k:].sort().values, perm[:k].sort().values


def fit_reference(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: LossFn,
    config: ReferenceTraining | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Train `model` on `dataset` (map-style) with AdamW; return it frozen, in eval mode."""
    config = config or ReferenceTraining()
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    for _ in range(config.epochs):
        for batch in loader:
            losses = loss_fn(model, batch)
            if losses.dim() != 1:
                raise ValueError(
                    f"loss_fn must return (B,) per-example losses, got shape {tuple(losses.shape)}"
                )
            opt.zero_grad(set_to_none=True)
            losses.mean().backward()
            opt.step()
    model.eval()
    model.requires_grad_(False)
    return model


@torch.no_grad()
def per_example_losses(
    model: nn.Module, dataset: Dataset, loss_fn: LossFn, batch_size: int = 1024
) -> torch.Tensor:
    """(len(dataset),) float32 losses of `model` on every example, in dataset order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = [loss_fn(model, batch).detach().float().cpu() for batch in loader]
    return torch.cat(out) if out else torch.empty(0)


def holdout_reference_losses(
    make_model: Callable[[], nn.Module],
    dataset: Dataset,
    loss_fn: LossFn,
    holdout: float | int = 0.1,
    config: ReferenceTraining | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """RHO-LOSS's recipe: (learner_indices, their reference losses, the reference model).

    A random `holdout` of the dataset trains a fresh make_model(); the learner trains on the
    remaining examples, learner_indices, scored here by that reference. The losses are aligned
    with learner_indices, not with the dataset: losses[k] is example learner_indices[k]'s. To
    look one up by the example's position p in the dataset, map it first (e.g. a tensor
    `by_position` of len(dataset) with by_position[learner_indices] = losses), or give each
    learner example its k as id.
    """
    config = config or ReferenceTraining()
    train_idx, hold_idx = split_holdout(len(dataset), holdout, generator)
    reference = fit_reference(
        make_model(), Subset(dataset, hold_idx.tolist()), loss_fn, config, generator
    )
    losses = per_example_losses(
        reference, Subset(dataset, train_idx.tolist()), loss_fn, config.score_batch_size
    )
    return train_idx, losses, reference


def two_halves_reference_losses(
    make_model: Callable[[], nn.Module],
    dataset: Dataset,
    loss_fn: LossFn,
    config: ReferenceTraining | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Reference losses for every example, no holdout: (len(dataset),), dataset order.

    Two fresh models, each trained on one random half; each example is scored by the model
    trained on the other half, so no example is scored by a model that saw it.
    """
    config = config or ReferenceTraining()
    half_a, half_b = split_holdout(len(dataset), len(dataset) // 2, generator)
    losses = torch.empty(len(dataset))
    for train_half, score_half in ((half_a, half_b), (half_b, half_a)):
        model = fit_reference(
            make_model(), Subset(dataset, train_half.tolist()), loss_fn, config, generator
        )
        losses[score_half] = per_example_losses(
            model, Subset(dataset, score_half.tolist()), loss_fn, config.score_batch_size
        )
    return losses


def unpacked(fn: Callable[..., torch.Tensor]) -> LossFn:
    """Adapt fn(model, *batch) (tuple batches) or fn(model, **batch) (dict batches) to loss_fn."""
    return lambda model, batch: call_scorer(lambda *a, **k: fn(model, *a, **k), batch)
