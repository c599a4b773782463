"""A short noisy-label run through the public drop-in API, on real Fashion-MNIST.

A reference trained on a small clean holdout; a fresh learner trained on a 40 %-noisy pool with
learnability selection (RHO-LOSS). Learnability must train on a clearly smaller share of
mislabelled examples than the noise rate, while uniform selection sees about the noise rate.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

from jestkit import SelectionConfig
from jestkit.dropin import SelectiveLoader
from jestkit.dropin.holdout import ReferenceTraining, fit_reference, unpacked
from jestkit.fashion.label_noise import add_label_noise
from jestkit.models.cnn import SmallCNN

RATE = 0.4


@pytest.fixture(scope="module")
def setup(fashion_train):
    images, labels = fashion_train
    images, labels = images[:2600], labels[:2600]
    hold, pool = torch.arange(600), torch.arange(600, 2600)
    torch.manual_seed(0)
    reference = fit_reference(
        SmallCNN(), Subset(TensorDataset(images, labels), hold.tolist()),
        unpacked(lambda m, x, y: F.cross_entropy(m(x), y, reduction="none")),
        ReferenceTraining(epochs=2, batch_size=32), torch.Generator().manual_seed(0),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    noisy, is_noisy = add_label_noise(labels[pool], RATE, generator=g)
    data = TensorDataset(images[pool], noisy, is_noisy)
    return reference, data


def noisy_share(policy, reference, data, steps=8):
    torch.manual_seed(1)
    model = SmallCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(data, batch_size=150, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(2))  # fmt: skip
    selected = SelectiveLoader(
        loader,
        learner=lambda x, y, noisy: F.cross_entropy(model(x), y, reduction="none"),
        reference=lambda x, y, noisy: F.cross_entropy(reference(x), y, reduction="none"),
        config=SelectionConfig(loss="per_example", policy=policy, filter_ratio=0.9,
                               method="independent", temperature=0.0),
        seed=0,
    )  # fmt: skip
    seen = []
    for step, (x, y, noisy) in enumerate(selected):
        if step == steps:
            break
        assert len(x) == 15
        seen.append(noisy)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat(seen).float().mean().item()


def test_learnability_avoids_mislabelled_examples(setup):
    share = noisy_share("learnability", *setup)
    assert share < RATE / 2, f"learnability trained on {share:.1%} mislabelled examples"


def test_uniform_sees_the_noise_rate(setup):
    # the control: without selection the learner trains on about RATE mislabelled examples
    share = noisy_share("uniform", *setup)
    assert abs(share - RATE) < 0.15, f"uniform trained on {share:.1%} mislabelled examples"
