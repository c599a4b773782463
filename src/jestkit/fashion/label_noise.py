"""Label noise with an exact rate: symmetric, or class-dependent towards a confusable class.

Exactly round(rate * N) labels are changed, chosen uniformly at random with a torch.Generator,
so the same generator state gives the same noise. Every changed label differs from the true
one, so `is_noisy` is exactly `noisy_labels != labels`.

* symmetric: a changed label becomes one of the other n_classes - 1 classes, uniformly.
* class_dependent: a changed label of class c becomes `confusable[c]`, the class a person (or a
  model) most easily mistakes it for. The Fashion-MNIST default pairs t-shirt <-> shirt,
  pullover <-> coat, sneaker <-> ankle boot, sandal -> sneaker, dress -> coat, trouser -> dress
  and bag -> t-shirt.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

NOISE_KINDS = ("symmetric", "class_dependent")

# Fashion-MNIST: 0 t-shirt, 1 trouser, 2 pullover, 3 dress, 4 coat,
#                5 sandal, 6 shirt, 7 sneaker, 8 bag, 9 ankle boot
FASHION_CONFUSABLE: dict[int, int] = {
    0: 6, 1: 3, 2: 4, 3: 4, 4: 2, 5: 7, 6: 0, 7: 9, 8: 0, 9: 7,
}  # fmt: skip


def add_label_noise(
    labels: torch.Tensor,
    rate: float,
    kind: str = "symmetric",
    *,
    n_classes: int = 10,
    confusable: Mapping[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy_labels, is_noisy) for int labels (N,) in 0..n_classes-1.

    rate: the exact share of labels changed (round(rate * N) of them), in [0, 1].
    confusable: class -> confusable class, for kind='class_dependent' (default: Fashion-MNIST's).
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")
    if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.is_floating_point():
        raise TypeError("labels must be a 1-d integer tensor (N,)")
    if n_classes < 2:
        raise ValueError(f"label noise needs n_classes >= 2, got {n_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")

    n = labels.shape[0]
    flipped = torch.randperm(n, generator=generator)[: round(rate * n)].to(labels.device)
    noisy = labels.clone()
    true = labels[flipped]
    if kind == "symmetric":
        # an offset in 1..n_classes-1 lands uniformly on one of the other classes
        offset = torch.randint(1, n_classes, (len(flipped),), generator=generator)
        noisy[flipped] = (true + offset.to(labels.device)) % n_classes
    else:
        mapping = dict(FASHION_CONFUSABLE if confusable is None else confusable)
        missing = [c for c in range(n_classes) if c not in mapping]
        if missing:
            raise ValueError(f"confusable has no target for class(es) {missing}")
        outside = [c for c in range(n_classes) if not 0 <= int(mapping[c]) < n_classes]
        if outside:
            raise ValueError(f"confusable maps class(es) {outside} outside 0..{n_classes - 1}")
        same = [c for c in range(n_classes) if mapping[c] == c]
        if same:
            raise ValueError(f"confusable maps class(es) {same} to themselves")
        table = torch.tensor([mapping[c] for c in range(n_classes)], device=labels.device)
        noisy[flipped] = table[true]
    is_noisy = torch.zeros(n, dtype=torch.bool, device=labels.device)
    is_noisy[flipped] = True
    return noisy, is_noisy
