"""The memory-bounded gains equal brute-force differences of the batch score."""

import pytest
import torch
from helpers import batch_score, random_embeddings
from hypothesis import given, settings
from hypothesis import strategies as st

from jestkit.core.gains import Weighted
from jestkit.core.losses import gain_state

POLICY_WEIGHTS = [(1.0, -1.0), (1.0, 0.0), (0.0, -1.0)]


def _models(seed: int, weights):
    learner = random_embeddings(9, 4, seed, scale=4.0, bias=-2.0)
    reference = random_embeddings(9, 4, seed + 1000, scale=7.0, bias=-5.0)
    return [(e, w) for e, w in ((learner, weights[0]), (reference, weights[1])) if w != 0]


@settings(max_examples=40, deadline=None)
@given(
    loss=st.sampled_from(["sigmoid", "softmax"]),
    seed=st.integers(0, 10_000),
    weights=st.sampled_from(POLICY_WEIGHTS),
    chunks=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    naive=st.booleans(),
)
def test_gain_equals_brute_force_difference(loss, seed, weights, chunks, naive):
    models = _models(seed, weights)
    weighted = [Weighted(e, w) for e, w in models]
    state = gain_state(loss, weighted, block_size=2, naive=naive)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(seed)).tolist()
    selected: list[int] = []
    for c in chunks:
        chunk = perm[len(selected) : len(selected) + c]
        state.add(torch.tensor(chunk))
        selected += chunk
    gains = state.gains()
    base = batch_score(loss, models, selected)
    for k in range(9):
        if k in selected:
            continue
        expected = batch_score(loss, models, selected + [k]) - base
        assert gains[k].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("naive", [False, True])
def test_sigmoid_first_scores_are_gains_from_empty_set(naive):
    models = _models(3, (1.0, -1.0))
    weighted = [Weighted(e, w) for e, w in models]
    state = gain_state("sigmoid", weighted, naive=naive)
    for k in range(9):
        assert state.first_scores()[k].item() == pytest.approx(batch_score("sigmoid", models, [k]))


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
@pytest.mark.parametrize("naive", [False, True])
def test_independent_scores_are_own_loss_in_whole_super_batch(loss, naive):
    """Each example's loss with the whole super-batch as context: s(B) - s(B without k) for
    sigmoid (its own pair terms); its own row and column terms for softmax."""
    models = _models(5, (1.0, -1.0))
    weighted = [Weighted(e, w) for e, w in models]
    state = gain_state(loss, weighted, block_size=4, naive=naive)
    scores = state.independent_scores()
    everyone = list(range(9))
    for k in range(9):
        if loss == "sigmoid":
            others = [j for j in everyone if j != k]
            expected = batch_score(loss, models, everyone) - batch_score(loss, models, others)
        else:
            expected = 0.0
            for e, w in models:
                s = float(e.logit_scale) * (e.image @ e.text.T)
                own = -2 * s[k, k] + torch.logsumexp(s[k], 0) + torch.logsumexp(s[:, k], 0)
                expected += w * float(own)
        assert scores[k].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_softmax_gain_from_empty_set_is_zero():
    models = _models(7, (1.0, -1.0))
    for k in range(9):
        assert batch_score("softmax", models, [k]) == pytest.approx(0.0, abs=1e-12)


def test_per_example_gains_are_the_weighted_losses():
    learner = torch.tensor([3.0, 1.0, 2.0])
    reference = torch.tensor([1.0, 1.0, 0.5])
    state = gain_state("per_example", [Weighted(learner, 1.0), Weighted(reference, -1.0)])
    state.add(torch.tensor([0]))
    assert state.gains().tolist() == [2.0, 0.0, 1.5]
