"""Bad input raises ValueError/TypeError naming the argument; nothing is clipped silently."""

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
