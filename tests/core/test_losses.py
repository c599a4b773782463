"""The loss table, and the training losses against brute-force loops."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import random_embeddings

from jestkit.core.gains import PerExampleGains, SigmoidGains, SoftmaxGains, Weighted
from jestkit.core.losses import (
    CONTRASTIVE_LOSSES,
    LOSSES,
    contrastive_loss,
    gain_state,
    get_loss,
    per_example_cross_entropy,
    sigmoid_loss,
    softmax_loss,
)
from jestkit.core.naive import NaiveSigmoidGains, NaiveSoftmaxGains


def test_the_table_names_each_loss_once():
    assert LOSSES == ("per_example", "sigmoid", "softmax")
    assert CONTRASTIVE_LOSSES == ("sigmoid", "softmax")
    with pytest.raises(ValueError, match="per_example"):
        get_loss("hinge")
    e = random_embeddings(5, 3, seed=0)
    models = [Weighted(e, 1.0)]
    assert isinstance(gain_state("sigmoid", models), SigmoidGains)
    assert isinstance(gain_state("softmax", models), SoftmaxGains)
    assert isinstance(gain_state("sigmoid", models, naive=True), NaiveSigmoidGains)
    assert isinstance(gain_state("softmax", models, naive=True), NaiveSoftmaxGains)
    losses = [Weighted(torch.rand(5), 1.0)]
    assert isinstance(gain_state("per_example", losses, naive=True), PerExampleGains)
    assert gain_state("per_example", losses, offset=5).offset == 5


def test_sigmoid_loss_brute_force():
    torch.manual_seed(0)
    u, v = F.normalize(torch.randn(5, 4), dim=1), F.normalize(torch.randn(5, 4), dim=1)
    t, b = 7.0, -3.0
    total = 0.0
    for i in range(5):
        for j in range(5):
            z = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-z * (t * float(u[i] @ v[j]) + b)))
    assert sigmoid_loss(u, v, t, b).item() == pytest.approx(total / 5, rel=1e-5)


def test_softmax_loss_brute_force():
    torch.manual_seed(1)
    u, v = F.normalize(torch.randn(4, 3), dim=1), F.normalize(torch.randn(4, 3), dim=1)
    t = 5.0
    s = [[t * float(u[i] @ v[j]) for j in range(4)] for i in range(4)]
    i2t = sum(-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(4))) for i in range(4))
    t2i = sum(-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(4))) for j in range(4))
    assert softmax_loss(u, v, t).item() == pytest.approx((i2t + t2i) / 8, rel=1e-5)


def test_per_example_cross_entropy_brute_force():
    torch.manual_seed(2)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 2, 1, 1, 0, 2])
    out = per_example_cross_entropy(logits, labels)
    assert out.shape == (6,)
    for i in range(6):
        lse = math.log(sum(math.exp(float(x)) for x in logits[i]))
        assert out[i].item() == pytest.approx(lse - float(logits[i, labels[i]]), rel=1e-5)


def test_contrastive_loss_by_name():
    u = F.normalize(torch.randn(3, 4), dim=1)
    assert contrastive_loss("sigmoid", u, u, 10.0, -10.0) == sigmoid_loss(u, u, 10.0, -10.0)
    assert contrastive_loss("softmax", u, u, 10.0) == softmax_loss(u, u, 10.0)
    with pytest.raises(ValueError, match="sigmoid"):
        contrastive_loss("hinge", u, u, 1.0)
