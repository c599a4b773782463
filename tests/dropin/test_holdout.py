"""The reference without a curated set: the held-out and two-halves recipes."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from jestkit.dropin.holdout import (
    ReferenceTraining,
    holdout_reference_losses,
    split_holdout,
    two_halves_reference_losses,
    unpacked,
)
from jestkit.fashion.label_noise import add_label_noise
from jestkit.models.cnn import SmallCNN

loss_fn = unpacked(lambda m, x, y: F.cross_entropy(m(x), y, reduction="none"))


@pytest.fixture(scope="module")
def fashion_slice(fashion_train):
    images, labels = fashion_train
    return images[:1200], labels[:1200]


def test_split_holdout_is_a_partition():
    train, hold = split_holdout(100, 0.2, torch.Generator().manual_seed(0))
    assert len(hold) == 20 and len(train) == 80
    assert sorted(torch.cat([train, hold]).tolist()) == list(range(100))
    train2, hold2 = split_holdout(100, 7)
    assert len(hold2) == 7
    with pytest.raises(ValueError, match="non-empty"):
        split_holdout(10, 10)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        split_holdout(10, 1.5)


def test_small_cnn_size_and_shapes():
    model = SmallCNN()
    assert 400_000 < sum(p.numel() for p in model.parameters()) < 500_000
    assert model(torch.zeros(3, 28, 28, dtype=torch.uint8)).shape == (3, 10)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(3, 2, 28, 28))


def test_holdout_recipe_runs_on_a_tiny_slice(fashion_slice):
    images, labels = fashion_slice
    dataset = TensorDataset(images[:600], labels[:600])
    torch.manual_seed(0)
    learner_idx, losses, reference = holdout_reference_losses(
        SmallCNN, dataset, loss_fn, holdout=200, config=ReferenceTraining(epochs=3, batch_size=50),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert len(learner_idx) == 400 and losses.shape == (400,)
    assert bool(torch.isfinite(losses).all())
    assert not any(p.requires_grad for p in reference.parameters())
    # trained on 200 clean examples, it already beats chance (10 %) on the rest by far
    with torch.no_grad():
        acc = (reference(images[learner_idx]).argmax(1) == labels[learner_idx]).float().mean()
    assert acc > 0.5
    assert losses.mean() < torch.log(torch.tensor(10.0))


def test_two_halves_scores_mislabelled_examples_higher(fashion_slice):
    images, labels = fashion_slice
    images, labels = images[:600], labels[:600]
    noisy, is_noisy = add_label_noise(labels, 0.4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    losses = two_halves_reference_losses(
        SmallCNN, TensorDataset(images, noisy), loss_fn,
        ReferenceTraining(epochs=2, batch_size=30), torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert losses.shape == (600,) and bool(torch.isfinite(losses).all())
    # every example is scored by the model of the other half: mislabelled ones look hard
    assert losses[is_noisy].mean() > losses[~is_noisy].mean() + 0.5
