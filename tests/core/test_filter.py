"""The offline filter's rule (DataComp's CLIP score) against a brute-force top K."""

import math

import pytest
import torch

from jestkit.core.filter import keep_top, similarity


def brute_force_top(scores: list[float], keep: float) -> list[int]:
    """Positions of the max(1, round(keep * n)) highest scores; ties to the earlier position."""
    n = max(1, round(keep * len(scores)))
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:n]


def test_similarity_is_the_cosine_of_each_pair():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    for i in (0, 17, 49):
        u, v = image[i].tolist(), text[i].tolist()
        dot = sum(a * b for a, b in zip(u, v, strict=True))
        norms = math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v))
        assert similarity(image, text)[i].item() == pytest.approx(dot / norms, abs=1e-6)


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.5, 1.0, 1e-4])
def test_keep_top_is_the_brute_force_top_k(keep):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(997, generator=g)
    scores[::7] = scores[3]  # ties: the earlier position goes first
    assert keep_top(scores, keep).tolist() == brute_force_top(scores.tolist(), keep)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="keep"):
        keep_top(torch.zeros(5), 0.0)
    with pytest.raises(ValueError, match="keep"):
        keep_top(torch.zeros(5), 1.5)
    with pytest.raises(ValueError, match="scores"):
        keep_top(torch.zeros(0), 0.5)
    with pytest.raises(ValueError, match="image and text"):
        similarity(torch.zeros(4, 3), torch.zeros(4, 2))
