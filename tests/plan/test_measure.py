"""The plan's measurements on embeddings whose answer is known."""

import math

import pytest
import torch
import torch.nn.functional as F

from jestkit.core.filter import similarity
from jestkit.plan import measure


def _pairs(n, matched, d=16, seed=0):
    """n unit image/text embeddings; the first `matched` share of rows have text = image + a
    little noise, the rest an unrelated text."""
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=1)
    text = F.normalize(torch.randn(n, d, generator=g), dim=1)
    k = round(matched * n)
    text[:k] = F.normalize(image[:k] + 0.3 * torch.randn(k, d, generator=g), dim=1)
    return image, text


@pytest.mark.parametrize("share", [0.15, 0.5, 0.9])
def test_matched_share_recovers_the_mixture(share):
    image, text = _pairs(4000, share)
    held_image, held_text = _pairs(1000, 1.0, seed=1)
    g = torch.Generator().manual_seed(2)
    est = measure.matched_share(similarity(image, text), similarity(held_image, held_text),
                                measure.shuffled_similarity(image, text, g))  # fmt: skip
    assert abs(est - share) < 0.03


def test_shuffled_pairs_never_pair_a_row_with_itself():
    image = torch.eye(8)
    sims = measure.shuffled_similarity(image, image, torch.Generator().manual_seed(0))
    assert torch.all(sims == 0)  # a row's own caption would score 1


def test_kept_precision_of_a_clean_cut():
    image, text = _pairs(4000, 0.2)
    held = similarity(*_pairs(1000, 1.0, seed=1))
    pool = similarity(image, text)
    assert measure.kept_precision(pool, held, 0.2, 0.1) > 0.9  # the top 10 % are all matched
    assert measure.kept_precision(pool, held, 0.2, 0.5) == pytest.approx(0.4, abs=0.03)


def test_a_reference_that_cannot_tell_is_refused():
    s = torch.zeros(10)
    with pytest.raises(ValueError, match="cannot tell noise from signal"):
        measure.matched_share(s, s, s + 0.1)


def test_near_duplicates_and_concepts():
    g = torch.Generator().manual_seed(0)
    pool = F.normalize(torch.randn(100, 32, generator=g), dim=1)
    pool[50:60] = pool[40:50]  # 10 exact copies of 10 others: 20 rows have a near-copy
    rows = torch.arange(100)
    assert measure.near_duplicate_share(pool, pool, rows, block=7) == pytest.approx(0.2)
    prompts = torch.eye(4)
    image = torch.zeros(8, 4)
    image[torch.arange(8), torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])] = 1
    shares = measure.concept_shares(image, prompts)
    assert shares.tolist() == [0.5, 0.25, 0.125, 0.125]
    c = measure.concentration(shares)
    assert 0 < c["entropy"] < 1 and c["rarest_over_balanced"] == 0.5
    assert measure.concentration(torch.ones(5))["entropy"] == pytest.approx(1.0)


def test_revisits():
    assert measure.revisits(800, 128, 5270) == pytest.approx(800 * 128 / 5270)
    assert math.isclose(measure.revisits(10, 10, 100), 1.0)
    with pytest.raises(ValueError):
        measure.revisits(1, 1, 0)


def test_pool_measurements_with_and_without_classes():
    """All the measurements at once; without class prompts (shards with retrieval sets only)
    there are no concept shares, and the matched share is still measured."""
    image, text = _pairs(2000, 0.4)
    held = _pairs(500, 1.0, seed=1)
    none = measure.pool_measurements(image, text, held, None, keep=0.3, sample=200)
    assert none["concepts_pool"] is None and none["concepts_kept"] is None
    assert abs(none["matched_share"] - 0.4) < 0.05 and none["keep"] == 0.3
    assert none["flops"] == 2 * 200 * 2000 * 32  # the sample against the pool, pairs of 2 x 16
    prompts = F.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(3)), dim=1)
    with_classes = measure.pool_measurements(image, text, held, prompts, sample=200)
    assert 0 < with_classes["concepts_pool"]["entropy"] <= 1
