"""Bad input raises ValueError/TypeError naming the argument; nothing is clipped silently."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import random_embeddings

import jestkit
from jestkit import Embeddings, SelectionConfig


def _pair(n=20, d=4):
    return random_embeddings(n, d, 0), random_embeddings(n, d, 1)


def _with(e: Embeddings, **kw) -> Embeddings:
    fields = dict(image=e.image, text=e.text, logit_scale=e.logit_scale, logit_bias=e.logit_bias)
    fields.update(kw)
    return Embeddings(**fields)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("field", ["image", "text"])
def test_non_finite_embeddings(bad, field):
    learner, reference = _pair()
    t = getattr(learner, field).clone()
    t[3, 1] = bad
    with pytest.raises(ValueError, match=f"learner.{field}.*NaN or Inf"):
        jestkit.select(_with(learner, **{field: t}), reference)


def test_non_finite_per_example_losses():
    with pytest.raises(ValueError, match="reference.*NaN or Inf"):
        jestkit.select(torch.ones(10), torch.tensor([0.0] * 9 + [float("nan")]), loss="per_example")


def test_non_finite_logit_scale():
    learner, reference = _pair()
    with pytest.raises(ValueError, match="logit_scale must be finite"):
        jestkit.select(learner, _with(reference, logit_scale=float("nan")))


def test_batch_size_mismatch():
    learner, _ = _pair(20)
    _, reference = _pair(21)
    with pytest.raises(ValueError, match="same super-batch.*20.*21"):
        jestkit.select(learner, reference)
    with pytest.raises(ValueError, match="learner.image and learner.text.*same batch size"):
        jestkit.select(_with(learner, text=learner.text[:5]), reference)


def test_embedding_dimension_mismatch():
    learner, reference = _pair()
    with pytest.raises(ValueError, match="same embedding dimension.*4 and 3"):
        jestkit.select(_with(learner, text=learner.text[:, :3]), reference)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_filter_ratio_out_of_range(ratio):
    learner, reference = _pair()
    with pytest.raises(ValueError, match="filter_ratio must be in \\[0, 1\\)"):
        jestkit.select(learner, reference, filter_ratio=ratio)


def test_filter_ratio_that_keeps_nothing():
    learner, reference = _pair(5)
    with pytest.raises(ValueError, match="keeps no example"):
        jestkit.select(learner, reference, filter_ratio=0.95)


def test_more_chunks_than_selected():
    learner, reference = _pair(20)
    with pytest.raises(ValueError, match="n_chunks = 16 is more chunks than selected.*b = 4"):
        jestkit.select(learner, reference, filter_ratio=0.8, n_chunks=16)


def test_empty_super_batch():
    empty = Embeddings(torch.empty(0, 4), torch.empty(0, 4))
    with pytest.raises(ValueError, match="empty"):
        jestkit.select(empty, empty)
    with pytest.raises(ValueError, match="empty"):
        jestkit.select(torch.empty(0), torch.empty(0), loss="per_example")


def test_wrong_output_types():
    learner, reference = _pair()
    with pytest.raises(TypeError, match="learner must be jestkit.Embeddings"):
        jestkit.select(torch.ones(20), reference)
    with pytest.raises(TypeError, match="learner must be a \\(B,\\) tensor"):
        jestkit.select(learner, torch.ones(20), loss="per_example")
    with pytest.raises(ValueError, match="1-d"):
        jestkit.select(torch.ones(20, 2), torch.ones(20), loss="per_example")
    with pytest.raises(TypeError, match="floating-point"):
        jestkit.select(torch.ones(20, dtype=torch.long), torch.ones(20), loss="per_example")


def test_missing_model_for_policy():
    learner, reference = _pair()
    with pytest.raises(ValueError, match="needs the reference's outputs"):
        jestkit.select(learner, None, policy="learnability")
    with pytest.raises(ValueError, match="needs the learner's outputs"):
        jestkit.select(None, reference, policy="hard_learner")
    # the policies that need only one model work without the other
    assert len(jestkit.select(learner, None, policy="hard_learner", n_chunks=2)) == 4
    assert len(jestkit.select(None, reference, policy="easy_reference", n_chunks=2)) == 4
    assert len(jestkit.select(policy="uniform", batch_size=20)) == 4
    with pytest.raises(ValueError, match="uniform selection needs batch_size"):
        jestkit.select(policy="uniform")


def test_devices_differ():
    learner, reference = _pair()
    on_meta = Embeddings(reference.image.to("meta"), reference.text.to("meta"))
    with pytest.raises(ValueError, match="learner and reference outputs must be on the same"):
        jestkit.select(learner, on_meta)
    with pytest.raises(ValueError, match="learner.image and learner.text must be on the same"):
        jestkit.select(_with(learner, text=learner.text.to("meta")), reference)
    with pytest.raises(ValueError, match="same device"):
        jestkit.select(torch.ones(4), torch.ones(4, device="meta"), loss="per_example")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("policy", "hardest", "policy must be one of"),
        ("method", "greedy", "method must be one of"),
        ("loss", "hinge", "loss must be one of"),
        ("temperature", -1.0, "temperature must be"),
        ("n_chunks", 0, "n_chunks must be a positive int"),
        ("filter_ratio", 1.0, "filter_ratio must be in"),
    ],
)
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        SelectionConfig(**{field: value})


# -- issue 16, item 9: empty embedding dimensions ---------------------------------------------


def test_zero_width_embeddings_are_refused():
    e = random_embeddings(8, 4, 0)
    empty = _with(e, image=e.image[:, :0], text=e.text[:, :0])
    with pytest.raises(ValueError, match="dimension"):
        jestkit.select(empty, None, SelectionConfig(policy="hard_learner", n_chunks=2))


# -- issue 28, round three: the Python API ------------------------------------------------------


def test_per_example_losses_whose_gains_overflow_are_refused():
    # finite losses whose float32 difference (learner - reference) is inf: before, the gains
    # were +-inf and the sampler drew among tied infinities
    big = torch.tensor([3e38, -3e38] * 10)
    for method in ("joint", "independent"):
        with pytest.raises(ValueError, match="learner holds per-example losses up to 3e\\+38"):
            jestkit.select(big, -big, loss="per_example", method=method, n_chunks=2)
    with pytest.raises(ValueError, match="reference holds per-example losses up to 1e\\+300"):
        jestkit.select(torch.ones(20, dtype=torch.float64), torch.full((20,), -1e300,
                       dtype=torch.float64), loss="per_example", n_chunks=2)  # fmt: skip
    # large but safe losses still select b distinct examples, the largest gains first
    safe = torch.arange(20.0) * 5e28
    idx = jestkit.select(safe, -safe, loss="per_example", n_chunks=2, temperature=0)
    assert sorted(idx.tolist()) == list(range(16, 20))


@pytest.mark.parametrize(
    "value",
    [
        np.float32(0.75),
        np.float64(0.75),
        torch.tensor(0.75),
        torch.tensor([0.75]),
        Fraction(3, 4),
    ],  # fmt: skip
    ids=["np.float32", "np.float64", "tensor", "1-element tensor", "Fraction"],
)
def test_real_numbers_of_any_kind_are_accepted(value):
    config = SelectionConfig(filter_ratio=value, temperature=value, n_chunks=np.int64(2))
    assert type(config.filter_ratio) is float and type(config.temperature) is float
    assert type(config.n_chunks) is int and config.n_chunks == 2
    learner, reference = _pair()
    assert len(jestkit.select(learner, reference, config)) == 5
    e = _with(learner, logit_scale=value, logit_bias=value)
    assert len(jestkit.select(e, reference, config)) == 5


@pytest.mark.parametrize(
    "field, value",
    [("filter_ratio", "0.8"), ("filter_ratio", True), ("filter_ratio", 1 + 2j),
     ("filter_ratio", None), ("filter_ratio", torch.tensor(0.5 + 0j)),
     ("temperature", "1"), ("temperature", True), ("temperature", np.bool_(True)),
     ("n_chunks", True), ("n_chunks", 2.0), ("n_chunks", "2"), ("block_size", True),
     ("block_size", 512.0), ("normalize_gains", "no"), ("normalize_gains", 1)],
)  # fmt: skip
def test_values_of_the_wrong_type_are_a_type_error_naming_them(field, value):
    with pytest.raises(TypeError, match=f"^{field} must be"):
        SelectionConfig(**{field: value})
    learner, reference = _pair()
    with pytest.raises(TypeError, match=f"^{field} must be"):
        jestkit.select(learner, reference, **{field: value})


@pytest.mark.parametrize("field", ["policy", "method", "loss"])
def test_names_of_the_wrong_type_list_the_choices(field):
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        SelectionConfig(**{field: ["sigmoid"]})


@pytest.mark.parametrize(
    "value",
    ["10", "abc", 1 + 2j, None, True, torch.tensor(1 + 2j), torch.tensor(True)],
    ids=["'10'", "'abc'", "1+2j", "None", "True", "complex tensor", "bool tensor"],
)
@pytest.mark.parametrize("field", ["logit_scale", "logit_bias"])
def test_logit_scale_and_bias_must_be_real_numbers(field, value):
    learner, reference = _pair()
    with pytest.raises(TypeError, match=f"learner.{field} must be a real number"):
        jestkit.select(_with(learner, **{field: value}), reference, n_chunks=2)


def test_sparse_and_meta_tensors_are_refused_naming_the_argument():
    ones = torch.ones(20)
    with pytest.raises(TypeError, match="learner must be a dense tensor.*sparse_coo"):
        jestkit.select(ones.to_sparse(), ones.to_sparse(), loss="per_example", n_chunks=2)
    meta = torch.ones(20, device="meta")
    with pytest.raises(ValueError, match="learner is on the meta device"):
        jestkit.select(meta, meta, loss="per_example", n_chunks=2)
    learner, reference = _pair()
    on_meta = Embeddings(learner.image.to("meta"), learner.text.to("meta"))
    with pytest.raises(ValueError, match="learner.image is on the meta device"):
        jestkit.select(on_meta, Embeddings(reference.image.to("meta"), reference.text.to("meta")))
    with pytest.raises(TypeError, match="learner.text must be a dense tensor"):
        jestkit.select(_with(learner, text=learner.text.to_sparse()), reference, n_chunks=2)
    with pytest.raises(ValueError, match="learner.logit_scale is on the meta device"):
        jestkit.select(_with(learner, logit_scale=torch.tensor(1.0, device="meta")), reference)


def test_a_generator_that_is_not_one_is_a_type_error():
    learner, reference = _pair()
    for call in (lambda: jestkit.select(learner, reference, generator="seed", n_chunks=2),
                 lambda: jestkit.select(policy="uniform", batch_size=20, generator="seed"),
                 lambda: jestkit.Selector(generator="seed")):  # fmt: skip
        with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got str"):
            call()


def test_a_config_that_is_not_a_selection_config_is_a_type_error():
    learner, reference = _pair()
    with pytest.raises(TypeError, match="config must be a jestkit.SelectionConfig.*got dict"):
        jestkit.select(learner, reference, {"loss": "sigmoid"})
    with pytest.raises(TypeError, match="config must be a jestkit.SelectionConfig.*got dict"):
        jestkit.Selector({"loss": "sigmoid"})
    with pytest.raises(TypeError, match="unknown selection setting 'filter'.*filter_ratio"):
        jestkit.select(learner, reference, filter=0.5)


@pytest.mark.parametrize(
    "seed, error",
    [(2**64, ValueError), (-1, ValueError), ("0", TypeError), (1.5, TypeError),
     (True, TypeError)],
)  # fmt: skip
def test_selector_seeds_out_of_range_or_of_the_wrong_type(seed, error):
    with pytest.raises(error, match="seed must be an int in \\[0, 2\\*\\*64 - 1\\]"):
        jestkit.Selector(seed=seed)


def test_selector_seeds_at_the_ends_of_the_range():
    for seed in (0, 2**64 - 1, np.uint64(2**64 - 1)):
        a, b = jestkit.Selector(seed=seed), jestkit.Selector(seed=int(seed))
        assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_a_state_that_is_not_a_selectors_is_refused_and_changes_nothing():
    selector = jestkit.Selector(seed=0)
    before = selector.state_dict()
    cases = [
        ([1, 2], TypeError, "state must be the dict that Selector.state_dict\\(\\) returned"),
        (None, TypeError, "state must be the dict"),
        ({"gen": 1}, ValueError, "state has no 'generator' entry"),
        ({"generator": torch.ones(10, dtype=torch.uint8)}, ValueError,
         "state\\['generator'\\] is not a state of a cpu torch.Generator"),
        ({"generator": "x"}, ValueError, "state\\['generator'\\] is not a state"),
        ({"generator": before["generator"].long()}, ValueError, "state\\['generator'\\]"),
    ]  # fmt: skip
    for state, error, match in cases:
        with pytest.raises(error, match=match):
            selector.load_state_dict(state)
        assert torch.equal(selector.generator.get_state(), before["generator"])
    selector.load_state_dict(before)  # its own state still loads


def test_the_exported_samplers_check_their_arguments():
    from jestkit.core import Weighted, chunk_sizes, gain_state, joint_sample
    from jestkit.core import sample_without_replacement as draw

    scores = torch.randn(10)
    # before: a negative temperature silently preferred the lowest scores; 1e40 was taken
    for t in (-1.0, 1e40):
        with pytest.raises(ValueError, match="temperature must be 0"):
            draw(scores, 3, t, None)
    cases = [
        (lambda: draw(scores, 3, "1", None), TypeError, "temperature must be a real number"),
        (lambda: draw(scores, "3", 1.0, None), TypeError, "k must be a non-negative int"),
        (lambda: draw(scores, 2.5, 1.0, None), TypeError, "k must be"),
        (lambda: draw(scores, True, 1.0, None), TypeError, "k must be"),
        (lambda: draw(scores, -1, 1.0, None), ValueError, "k must be"),
        (lambda: draw(scores, 3, 1.0, "seed"), TypeError, "generator must be a torch.Generator"),
        (lambda: draw([1.0, 2.0], 1, 1.0, None), TypeError, "scores must be a torch.Tensor"),
        (lambda: chunk_sizes(4, 0), ValueError, "n_chunks must be a positive int"),
    ]  # fmt: skip
    state = lambda: gain_state("per_example", [Weighted(scores, 1.0)])  # noqa: E731
    cases += [
        (lambda: joint_sample(state(), 2.5, 2), TypeError, "b must be a positive int"),
        (lambda: joint_sample(state(), 4, True), TypeError, "n_chunks must be a positive int"),
        (lambda: joint_sample(state(), 4, 0), ValueError, "n_chunks must be a positive int"),
        (lambda: joint_sample(state(), 20, 2), ValueError, "cannot select b = 20 of .* B = 10"),
        (lambda: joint_sample(state(), 4, 2, 1e40), ValueError, "temperature must be 0"),
        (lambda: joint_sample(state(), 4, 2, 1.0, "seed"), TypeError, "generator must be a"),
        (lambda: joint_sample(state(), 4, 2, 1.0, None, "yes"), TypeError,
         "normalize_gains must be True or False"),
    ]  # fmt: skip
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    assert draw(scores, 0, 1.0, None).numel() == 0
    assert (
        sorted(joint_sample(state(), 4, 2, 0).tolist()) == scores.topk(4).indices.sort()[0].tolist()
    )


def test_uniform_batch_size_must_be_an_int():
    for bad, error in [(2.5, TypeError), ("20", TypeError), (True, TypeError), (0, ValueError)]:
        with pytest.raises(error, match="batch_size must be a positive int"):
            jestkit.select(policy="uniform", batch_size=bad)
    assert len(jestkit.select(policy="uniform", batch_size=np.int64(20))) == 4


def test_finite_values_whose_sum_overflows_are_accepted_and_a_lone_nan_is_not():
    """check_finite reads one sum first: finite values whose float32 sum is inf must still pass
    (the elementwise check decides), and one NaN or Inf among finite values must be caught."""
    from jestkit.core.validate import check_finite

    big = torch.full((4, 3), 3e38)
    assert not torch.isfinite(big.sum())
    check_finite("x", big)  # no error: every value is finite
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.randn(64, 8)
        x[17, 5] = bad
        with pytest.raises(ValueError, match="1 NaN or Inf"):
            check_finite("x", x)
    check_finite("x", torch.empty(0, 8))


def test_logit_bound_of_embeddings_whose_squares_overflow_float32():
    """Row norms beyond float32 (squares overflow) are recomputed in float64: the refusal names
    the true norm, and a tiny scale that keeps the logits small is accepted."""
    from jestkit.core.validate import check_logit_range

    img = torch.full((3, 4), 1e20)
    txt = torch.full((3, 4), 1e-30)
    check_logit_range("m", img, txt, scale=1.0, bias=0.0)  # |logit| <= 2e20 * 2e-30: fine
    with pytest.raises(ValueError, match="norms up to 2e\\+20"):
        check_logit_range("m", img, img, scale=1.0, bias=0.0)
