"""Shared test helpers: brute-force batch losses written from the definitions, for checking the
core; random embeddings; the small data, model and run of the training tests."""

from __future__ import annotations

import math

import pytest
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


def check_time(plan: dict, text: str) -> None:
    """A plan.json's predicted seconds: every method's measured step time (CPU and wall, > 0),
    its steps at that time, and its total with the reference's training and pass (timed) added
    where it uses the reference, its one-off pass over the kept shards at the pass's rate; the
    table's wall-time column and the plan's own time."""
    t, m = plan["time"], plan["measurements"]
    ref = t["reference"]
    assert ref["train"]["wall"] > 0 and ref["pass"]["wall"] > 0  # the reference's record, timed
    assert ref["total"] == {k: pytest.approx(ref["train"][k] + ref["pass"][k]) for k in ("cpu",
                                                                                       "wall")}
    assert set(t["methods"]) == set(plan["methods"])
    for name, method in plan["methods"].items():
        mt = t["methods"][name]
        for clock in ("cpu", "wall"):
            assert mt["per_step"][clock] > 0, (name, clock)
            steps = method["steps"] * mt["per_step"][clock]
            assert mt["steps"][clock] == pytest.approx(steps)
            charged = method["flops_split"]["reference"]  # the reference, and a one-off pass
            once = 0.0 if not charged else ref["pass"][clock] * (
                charged - m["reference_flops"]) / m["reference_pass_flops"]  # fmt: skip
            expected = steps + once + (ref["total"][clock] if charged else 0.0)
            assert mt["total"][clock] == pytest.approx(expected), (name, clock)
    assert "wall time" in text and t["plan"]["wall"] > 0 and "of wall time" in text
