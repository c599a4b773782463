"""The joint sampler against the exact chunk-sequential distribution, computed by enumeration."""

import itertools
import math
from collections import Counter

import pytest
import torch
from helpers import batch_score, random_embeddings

import jestkit
from jestkit.core.sampler import chunk_sizes

B, D = 5, 3


def _pair(seed: int):
    learner = random_embeddings(B, D, seed, scale=3.0, bias=-1.0)
    reference = random_embeddings(B, D, seed + 1, scale=2.0, bias=-1.0)
    return learner, reference


def _brute_scores(loss, models, chosen: list[int]) -> list[float]:
    """The sampler's scores for every candidate given the chosen set, from batch losses."""
    if chosen:
        base = batch_score(loss, models, chosen)
        return [batch_score(loss, models, chosen + [k]) - base for k in range(B)]
    if loss == "sigmoid":
        return [batch_score(loss, models, [k]) for k in range(B)]
    # softmax: the first chunk is scored by the example's loss against the whole super-batch
    scores = []
    for k in range(B):
        total = 0.0
        for e, w in models:
            s = float(e.logit_scale) * (e.image @ e.text.T)
            total += w * float(-2 * s[k, k] + s[k].logsumexp(0) + s[:, k].logsumexp(0))
        scores.append(total)
    return scores


def _set_probability(logits: list[float], chunk: tuple[int, ...], excluded: set[int]) -> float:
    """P(a Plackett-Luce draw of len(chunk) items from the non-excluded ones is this set)."""
    weights = {k: math.exp(v) for k, v in enumerate(logits) if k not in excluded}
    total = 0.0
    for order in itertools.permutations(chunk):
        p, mass = 1.0, sum(weights.values())
        for k in order:
            p *= weights[k] / mass
            mass -= weights[k]
        total += p
    return total


def _exact_distribution(loss, models, b, n_chunks, temperature):
    """{(chunk1 set, chunk2 set, ...): probability}, enumerated."""
    dist = {(): 1.0}
    chosen_of = {(): []}
    for c in chunk_sizes(b, n_chunks):
        nxt, nxt_chosen = {}, {}
        for key, p in dist.items():
            chosen = chosen_of[key]
            logits = [s / temperature for s in _brute_scores(loss, models, chosen)]
            rest = [k for k in range(B) if k not in chosen]
            for chunk in itertools.combinations(rest, c):
                q = _set_probability(logits, chunk, set(chosen))
                new_key = key + (frozenset(chunk),)
                nxt[new_key] = p * q
                nxt_chosen[new_key] = chosen + list(chunk)
        dist, chosen_of = nxt, nxt_chosen
    return dist


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
def test_joint_sampler_matches_enumerated_distribution(loss):
    learner, reference = _pair(11)
    models = [(learner, 1.0), (reference, -1.0)]
    b, n_chunks, temperature = 3, 2, 2.0
    exact = _exact_distribution(loss, models, b, n_chunks, temperature)
    assert sum(exact.values()) == pytest.approx(1.0)
    sizes = chunk_sizes(b, n_chunks)
    gen = torch.Generator().manual_seed(1234)
    n_draws = 6000
    counts = Counter()
    for _ in range(n_draws):
        idx = jestkit.select(
            learner,
            reference,
            generator=gen,
            loss=loss,
            filter_ratio=1 - b / B,
            n_chunks=n_chunks,
            temperature=temperature,
        ).tolist()
        key, start = (), 0
        for c in sizes:
            key += (frozenset(idx[start : start + c]),)
            start += c
        counts[key] += 1
    assert set(counts) <= set(exact)
    tv = 0.5 * sum(abs(counts[k] / n_draws - p) for k, p in exact.items())
    # 30 outcomes, 6,000 draws: sampling noise gives TV around 0.02; a wrong sampler (stale gains,
    # noise reused across chunks, unmasked picks) is far off. Seeds are fixed: no flakiness.
    assert tv < 0.04, f"total variation {tv:.3f}"
    # a clearly non-uniform target, so the test can tell a sampler that ignores the gains
    assert max(exact.values()) > 3 / len(exact)


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
def test_greedy_equals_enumerated_chunkwise_argmax(loss):
    for seed in range(5):
        learner, reference = _pair(seed)
        models = [(learner, 1.0), (reference, -1.0)]
        chosen: list[int] = []
        for c in chunk_sizes(4, 3):
            scores = _brute_scores(loss, models, chosen)
            rest = [k for k in range(B) if k not in chosen]
            chosen += sorted(rest, key=lambda k: -scores[k])[:c]
        got = jestkit.select(
            learner, reference, loss=loss, filter_ratio=1 - 4 / B, n_chunks=3, temperature=0
        ).tolist()
        assert got == chosen


def _big(seed, n=200, d=16, dtype=torch.float64):
    return (
        random_embeddings(n, d, seed, scale=10.0, bias=-10.0, dtype=dtype),
        random_embeddings(n, d, seed + 7, scale=8.0, bias=-6.0, dtype=dtype),
    )


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
@pytest.mark.parametrize("policy", ["learnability", "hard_learner", "easy_reference"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_memory_bounded_equals_naive(loss, policy, temperature):
    learner, reference = _big(3)
    kw = dict(loss=loss, policy=policy, temperature=temperature, filter_ratio=0.75, n_chunks=7)
    a = jestkit.select(learner, reference, generator=torch.Generator().manual_seed(5), **kw)
    b = jestkit.select(
        learner, reference, generator=torch.Generator().manual_seed(5), naive=True, **kw
    )
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("loss", ["sigmoid", "softmax", "per_example"])
@pytest.mark.parametrize("method", ["joint", "independent"])
@pytest.mark.parametrize("policy", jestkit.POLICIES)
def test_b_distinct_indices_and_seeded(loss, method, policy):
    learner, reference = _big(1, n=101)
    if loss == "per_example":
        learner, reference = learner.image[:, 0], reference.image[:, 0]
    kw = dict(loss=loss, method=method, policy=policy, filter_ratio=0.8, n_chunks=6)
    a = jestkit.select(learner, reference, generator=torch.Generator().manual_seed(0), **kw)
    again = jestkit.select(learner, reference, generator=torch.Generator().manual_seed(0), **kw)
    other = jestkit.select(learner, reference, generator=torch.Generator().manual_seed(1), **kw)
    assert len(a) == 20 and len(set(a.tolist())) == 20  # b = round(0.2 * 101)
    assert a.min() >= 0 and a.max() < 101
    assert a.dtype == torch.long
    assert a.tolist() == again.tolist()
    assert a.tolist() != other.tolist()


def test_per_example_joint_greedy_equals_independent_top_k():
    losses = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = torch.randn(50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = dict(loss="per_example", filter_ratio=0.6, temperature=0)
    joint = jestkit.select(losses, ref, method="joint", n_chunks=4, **kw)
    indep = jestkit.select(losses, ref, method="independent", **kw)
    assert joint.tolist() == indep.tolist() == torch.topk(losses - ref, 20).indices.tolist()


def test_b_not_divisible_by_n_chunks():
    assert chunk_sizes(10, 4) == [3, 3, 2, 2]
    learner, reference = _big(2, n=53)
    idx = jestkit.select(learner, reference, filter_ratio=0.8, n_chunks=4)  # b = 11
    assert len(set(idx.tolist())) == 11


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_computed_in_fp32(loss, dtype):
    low = _big(4, n=64, dtype=torch.float32)
    low = [jestkit.Embeddings(e.image.to(dtype), e.text.to(dtype), 10.0, -10.0) for e in low]
    high = [jestkit.Embeddings(e.image.float(), e.text.float(), 10.0, -10.0) for e in low]
    kw = dict(loss=loss, temperature=0.0, n_chunks=4)
    assert jestkit.select(*low, **kw).tolist() == jestkit.select(*high, **kw).tolist()


def test_normalized_gains_divide_by_batch_size():
    """Dividing the raw gains by |C| + 1 is the same as raising the temperature chunk by chunk."""
    learner, reference = _big(6, n=60)
    idx = jestkit.select(
        learner, reference, normalize_gains=True, temperature=0.0, n_chunks=3, filter_ratio=0.5
    )
    greedy = jestkit.select(learner, reference, temperature=0.0, n_chunks=3, filter_ratio=0.5)
    assert idx.tolist() == greedy.tolist()  # greedy is scale-free
    sampled = jestkit.select(
        learner,
        reference,
        normalize_gains=True,
        n_chunks=3,
        filter_ratio=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(set(sampled.tolist())) == 30


def test_selector_reuses_its_generator_and_restores_state():
    learner, reference = _big(8, n=40)
    sel = jestkit.Selector(seed=3, filter_ratio=0.5, n_chunks=4)
    state = sel.state_dict()
    first, second = sel(learner, reference), sel(learner, reference)
    assert first.tolist() != second.tolist()
    sel.load_state_dict(state)
    assert sel(learner, reference).tolist() == first.tolist()
    assert sel.n_selected(40) == 20


# -- issue 16, item 8: every selection is b distinct indices, or an error ---------------------


def _distinct(idx, b):
    return len(idx) == b and len(set(idx.tolist())) == b


@pytest.mark.parametrize("method", ["joint", "independent"])
def test_extreme_temperatures_select_b_distinct_or_refuse(method):
    learner = random_embeddings(64, 8, 0, dtype=torch.float32)
    reference = random_embeddings(64, 8, 1, dtype=torch.float32)
    config = jestkit.SelectionConfig(filter_ratio=0.75, n_chunks=4, method=method)
    for t in (1e39, 3.5e38, 1e-40):  # overflow float32 (in the division, or 1/t)
        with pytest.raises(ValueError, match="temperature"):
            jestkit.select(learner, reference, config, temperature=t)
    greedy = jestkit.select(learner, reference, config, temperature=0.0)
    for t in (1e30, 1.0, 1e-30):
        g = torch.Generator().manual_seed(0)
        idx = jestkit.select(learner, reference, config, temperature=t, generator=g)
        assert _distinct(idx, 16), t
    g = torch.Generator().manual_seed(0)
    cold = jestkit.select(learner, reference, config, temperature=1e-30, generator=g)
    assert cold.tolist() == greedy.tolist()  # the limit t -> 0 is greedy, not a divergence


def test_nan_gains_are_an_error_not_a_repeated_example():
    from jestkit.core.sampler import joint_sample, sample_without_replacement

    scores = torch.tensor([1.0, float("nan"), 2.0, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        sample_without_replacement(scores, 2, 1.0, torch.Generator().manual_seed(0))

    class NanGains:  # a gain state whose gains overflowed after the first chunk
        size = 8

        def first_scores(self):
            return torch.arange(8.0)

        def gains(self):
            return torch.full((8,), float("nan"))

        def add(self, local):
            pass

    for t in (0.0, 1.0):
        with pytest.raises(ValueError, match="NaN"):
            joint_sample(NanGains(), 4, 2, t, torch.Generator().manual_seed(0))


def test_a_draw_that_repeats_an_index_is_refused():
    from jestkit.core.sampler import joint_sample

    class Flat:
        size = 8

        def first_scores(self):
            return torch.zeros(8)

        def gains(self):
            return torch.zeros(8)

        def add(self, local):
            pass

    with pytest.raises(RuntimeError, match="distinct"):
        joint_sample(Flat(), 4, 2, draw=lambda scores, c: torch.zeros(c, dtype=torch.long))


def test_huge_finite_embeddings_are_refused_before_the_gains_overflow():
    learner = random_embeddings(32, 8, 0, dtype=torch.float32)
    reference = random_embeddings(32, 8, 1, dtype=torch.float32)
    huge = jestkit.Embeddings(learner.image * 1e20, learner.text * 1e20, learner.logit_scale,
                              learner.logit_bias)  # fmt: skip
    for loss in ("sigmoid", "softmax"):
        for method in ("joint", "independent"):
            with pytest.raises(ValueError, match="overflow"):
                jestkit.select(huge, reference, filter_ratio=0.5, n_chunks=4, loss=loss,
                               method=method)  # fmt: skip
