"""Shared test helpers: brute-force batch losses written from the definitions, for checking the
core; random embeddings; the small data, model and run of the training tests."""

from __future__ import annotations

import math

import torch

from jestkit import Embeddings, SelectionConfig
from jestkit.core import naive
from jestkit.engine.config import TrainConfig, TrainingConfig
from jestkit.fashion.captions import PoolConfig
from jestkit.models.factory import ModelConfig

LIMIT = 1500  # train and test images of the training tests
POOL = PoolConfig(curated_size=400, limit=LIMIT)
MODEL = ModelConfig(dim=32, depth=1, text_depth=1, heads=2, embed_dim=32)
TINY = TrainConfig(
    selection=SelectionConfig(n_chunks=4),
    training=TrainingConfig(batch_size=16, steps=6, eval_every=3, checkpoint_every=3),
)


def sigmoid_batch_loss(e: Embeddings, subset: list[int]) -> float:
    total = 0.0
    for i in subset:
        for j in subset:
            z = 1.0 if i == j else -1.0
            logit = float(e.logit_scale) * float(e.image[i] @ e.text[j]) + float(e.logit_bias)
            total += math.log1p(math.exp(-z * logit))
    return total


def softmax_batch_loss(e: Embeddings, subset: list[int]) -> float:
    if not subset:
        return 0.0
    idx = torch.tensor(subset)
    s = float(e.logit_scale) * (e.image[idx].double() @ e.text[idx].double().T)
    rows = -torch.diagonal(s) + torch.logsumexp(s, 1)
    cols = -torch.diagonal(s) + torch.logsumexp(s, 0)
    return float((rows + cols).sum())


def batch_score(loss: str, models: list[tuple[Embeddings, float]], subset: list[int]) -> float:
    fn = sigmoid_batch_loss if loss == "sigmoid" else softmax_batch_loss
    return sum(w * fn(e, subset) for e, w in models)


def random_embeddings(n: int, d: int, seed: int, scale=5.0, bias=-3.0, dtype=torch.float64):
    """Random embeddings from a fresh generator seeded `seed` (jestkit.core.naive's helper)."""
    g = torch.Generator().manual_seed(seed)
    return naive.random_embeddings(n, d, g, scale, bias, noise=0.8, dtype=dtype)


def check_pilots(plan: dict) -> None:
    """A plan.json whose rules decided nothing: it piloted exactly the undecided methods, each
    pilot's prediction is its interval (low <= high), and the pilots are in the plan's cost."""
    assert plan["undecided"] and set(plan["pilots"]) == set(plan["undecided"])
    for name, pilot in plan["pilots"].items():
        low, high = pilot["interval"]
        assert low <= high and plan["methods"][name]["predicted_accuracy"] == [low, high]
        assert pilot["steps"][0] < pilot["steps"][1]
    assert plan["plan_flops"] > plan["measurements"]["flops"]  # the pilots are charged
