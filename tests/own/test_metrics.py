"""The held-out metrics (jestkit.own.metrics) against clip_benchmark's own functions (the field's
reference implementation, clip-benchmark 1.6.2) and against brute-force loops written from the
definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import zeroshot_classification as cb_zs
from clip_benchmark.metrics import zeroshot_retrieval as cb_ret
from sklearn.metrics import balanced_accuracy_score

from jestkit.own.metrics import (
    class_weights,
    classification_metrics,
    retrieval_metrics,
    zero_shot_metrics,
)


def _correlated(n_images, n_classes, d, seed, noise=1.5):
    """Image embeddings near their class's direction: metrics well away from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, d, generator=g)
    labels = torch.randint(0, n_classes, (n_images,), generator=g)
    images = centres[labels] + noise * torch.randn(n_images, d, generator=g)
    return images, labels, centres, g


def _clip_benchmark_accuracy(logits, labels, topk):
    """clip_benchmark.metrics.zeroshot_classification.accuracy; its last line calls float() on a
    one-element array, which NumPy 2.4 refuses (TypeError), so it runs here with .item()."""
    try:
        return cb_zs.accuracy(logits, labels, topk=topk)
    except TypeError:
        pred = logits.topk(max(topk), 1, True, True)[1].t()  # clip_benchmark's own lines
        correct = pred.eq(labels.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(labels) for k in topk]


@pytest.mark.parametrize("n_classes", [3, 12])
def test_zero_shot_matches_clip_benchmark(n_classes):
    images, labels, centres, g = _correlated(300, n_classes, 16, seed=n_classes)
    templates = 4
    prompts = centres[:, None] + torch.randn(n_classes, templates, 16, generator=g)
    prompts = prompts * torch.rand(n_classes, templates, 1, generator=g) * 3  # unequal norms
    ours = zero_shot_metrics(images, labels, prompts)

    # clip_benchmark: its classifier from a model whose encode_text returns the prompts' rows
    class Model:
        def encode_text(self, idx):
            return prompts.reshape(-1, 16)[idx]

    names = [str(c) for c in range(n_classes)]
    templates_ = [f"{t} {{c}}" for t in range(templates)]
    tok = lambda texts: torch.tensor([int(s.split()[1]) * templates + int(s.split()[0])  # noqa: E731
                                      for s in texts])
    weights = cb_zs.zero_shot_classifier(Model(), tok, names, templates_, "cpu", amp=False)
    torch.testing.assert_close(class_weights(prompts), weights.T)
    logits = 100.0 * F.normalize(images, dim=-1) @ weights
    acc = _clip_benchmark_accuracy(logits, labels, topk=(1, 5) if n_classes >= 5 else (1,))
    assert ours["acc1"] == pytest.approx(acc[0], abs=1e-6)
    if n_classes >= 5:
        assert ours["acc5"] == pytest.approx(acc[1], abs=1e-6)
    else:
        assert "acc5" not in ours  # clip_benchmark reports nan below 5 classes
    expected = balanced_accuracy_score(labels, logits.argmax(1))
    assert ours["mean_per_class_recall"] == pytest.approx(expected, abs=1e-6)
    assert 0.2 < ours["acc1"] < 0.95  # a test that could fail: not all right, not all wrong


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_mean_per_class_recall_skips_absent_classes():
    """A class without test images does not count (as scikit-learn's balanced accuracy)."""
    logits = torch.tensor([[3.0, 0, 0, 1], [0, 2.0, 0, 0], [0, 0, 0, 1.0], [0, 0, 2.0, 0]])
    labels = torch.tensor([0, 1, 1, 0])
    ours = classification_metrics(logits, labels)
    assert ours["acc1"] == 0.5
    assert ours["mean_per_class_recall"] == balanced_accuracy_score(labels, logits.argmax(1))


def _retrieval_case(n_images, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, 8, generator=g)
    per_image = torch.randint(1, 4, (n_images,), generator=g)  # 1 to 3 captions each
    text_image = torch.repeat_interleave(torch.arange(n_images), per_image)
    texts = images[text_image] + 1.2 * torch.randn(len(text_image), 8, generator=g)
    return images, texts, text_image


def test_retrieval_matches_clip_benchmark():
    images, texts, text_image = _retrieval_case(120, seed=0)
    ours = retrieval_metrics(images, texts, text_image, block=7)  # blocks: a ragged last one
    img, txt = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    scores = txt @ img.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(txt)), text_image] = True
    for k in (1, 5, 10):
        t2i = (cb_ret.recall_at_k(scores, positive, k) > 0).float().mean().item()
        i2t = (cb_ret.recall_at_k(scores.T, positive.T, k) > 0).float().mean().item()
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(t2i, abs=1e-6)
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(i2t, abs=1e-6)
    assert ours["mean_recall@1"] == pytest.approx(
        (ours["image_retrieval_recall@1"] + ours["text_retrieval_recall@1"]) / 2)
    assert 0.1 < ours["image_retrieval_recall@1"] < 0.9


def test_retrieval_brute_force():
    """Loops over every query: a hit when a positive is among the k most similar keys."""
    images, texts, text_image = _retrieval_case(40, seed=3)
    ours = retrieval_metrics(images, texts, text_image, ks=(1, 3), block=1000)
    img, txt = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    for k in (1, 3):
        t2i = [int(text_image[t]) in (img @ txt[t]).argsort(descending=True)[:k].tolist()
               for t in range(len(txt))]
        i2t = [any(int(text_image[j]) == i for j in (txt @ img[i]).argsort(descending=True)[:k])
               for i in range(len(img))]
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(sum(t2i) / len(t2i))
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(sum(i2t) / len(i2t))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="text_image"):
        retrieval_metrics(torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(torch.randn(3, 4), torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="classes, templates"):
        class_weights(torch.randn(3, 4))
