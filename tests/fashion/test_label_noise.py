import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jestkit.fashion.label_noise import FASHION_CONFUSABLE, add_label_noise


def labels_of(n, seed=0):
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3000),
    rate=st.floats(0.0, 1.0),
    kind=st.sampled_from(["symmetric", "class_dependent"]),
    seed=st.integers(0, 2**31),
)
def test_rate_is_exact_and_mask_marks_changed_labels(n, rate, kind, seed):
    labels = labels_of(n, seed)
    noisy, is_noisy = add_label_noise(
        labels, rate, kind, generator=torch.Generator().manual_seed(seed)
    )
    assert int(is_noisy.sum()) == round(rate * n)
    assert torch.equal(is_noisy, noisy != labels)
    assert noisy.dtype == labels.dtype and noisy.shape == labels.shape
    assert int(noisy.min()) >= 0 and int(noisy.max()) < 10


def test_class_dependent_flips_only_to_the_confusable_class():
    labels = labels_of(20_000)
    noisy, is_noisy = add_label_noise(
        labels, 0.4, "class_dependent", generator=torch.Generator().manual_seed(1)
    )
    for c in range(10):
        flipped_to = noisy[is_noisy & (labels == c)].unique().tolist()
        assert flipped_to == [FASHION_CONFUSABLE[c]]
    assert FASHION_CONFUSABLE[0] == 6 and FASHION_CONFUSABLE[6] == 0  # t-shirt <-> shirt
    assert FASHION_CONFUSABLE[2] == 4 and FASHION_CONFUSABLE[4] == 2  # pullover <-> coat
    assert FASHION_CONFUSABLE[7] == 9 and FASHION_CONFUSABLE[9] == 7  # sneaker <-> ankle boot


def test_symmetric_spreads_over_the_other_classes():
    labels = torch.zeros(9000, dtype=torch.long)
    noisy, is_noisy = add_label_noise(labels, 0.5, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(noisy[is_noisy], minlength=10)
    assert counts[0] == 0
    assert counts[1:].min() > 0.7 * 4500 / 9  # roughly uniform over the 9 other classes


def test_deterministic_given_the_generator_and_custom_mapping():
    labels = labels_of(500)
    a = add_label_noise(labels, 0.3, generator=torch.Generator().manual_seed(5))
    b = add_label_noise(labels, 0.3, generator=torch.Generator().manual_seed(5))
    c = add_label_noise(labels, 0.3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    two = torch.tensor([0, 1, 0, 1])
    noisy, mask = add_label_noise(two, 1.0, "class_dependent", n_classes=2, confusable={0: 1, 1: 0})
    assert torch.equal(noisy, 1 - two) and bool(mask.all())


def test_bad_input_raises():
    labels = labels_of(10)
    with pytest.raises(ValueError, match="rate"):
        add_label_noise(labels, 1.5)
    with pytest.raises(ValueError, match="kind"):
        add_label_noise(labels, 0.2, "pairflip")
    with pytest.raises(TypeError, match="integer"):
        add_label_noise(labels.float(), 0.2)
    with pytest.raises(ValueError, match="0..9"):
        add_label_noise(labels + 10, 0.2)
    with pytest.raises(ValueError, match="themselves"):
        add_label_noise(labels, 0.2, "class_dependent", confusable={c: c for c in range(10)})
