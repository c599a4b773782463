"""Held-out metrics as clip_benchmark (and DataComp, which runs it) computes them: pure tensor
functions, embeddings in, numbers out.

Zero-shot classification: each class's prompt embeddings (one per template) are normalised,
averaged and normalised again (`class_weights`); an image's logits are its cosine similarity to
every class; top-1 / top-5 accuracy, and mean per-class recall (scikit-learn's balanced accuracy:
the recall of every class that has test images, averaged).

Retrieval: every caption belongs to one image (an image may have several captions). Image
retrieval (text -> image) recall@k: the share of captions whose image is among their k most
similar images; text retrieval (image -> text) recall@k: the share of images with at least one of
their captions among their k most similar captions. DataComp's `mean_recall@1` is the mean of
the two recall@1. Similarities are computed `block` rows at a time, never all N x M at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_weights(prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """(C, T, D) embeddings of C classes' T prompts -> (C, D) unit class vectors: each prompt
    normalised, averaged over the templates, normalised again."""
    if prompt_embeddings.dim() != 3:
        raise ValueError(
            "prompt_embeddings must be (classes, templates, dim), got "
            f"{tuple(prompt_embeddings.shape)}"
        )
    return F.normalize(F.normalize(prompt_embeddings.float(), dim=-1).mean(1), dim=-1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """acc1, acc5 (only with at least 5 classes, as clip_benchmark) and mean_per_class_recall of
    (N, C) logits against (N,) labels."""
    n, classes = logits.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must be ({n},), got {tuple(labels.shape)}")
    top = logits.topk(min(5, classes), dim=1).indices
    hit = top == labels[:, None]
    out = {"acc1": hit[:, 0].float().mean().item()}
    if classes >= 5:
        out["acc5"] = hit.any(1).float().mean().item()
    present = labels.unique()
    correct = hit[:, 0].float()
    recall = torch.stack([correct[labels == c].mean() for c in present])
    out["mean_per_class_recall"] = recall.mean().item()
    return out


@torch.no_grad()
def zero_shot_metrics(image_embeddings: torch.Tensor, labels: torch.Tensor,
                      prompt_embeddings: torch.Tensor) -> dict[str, float]:  # fmt: skip
    """The zero-shot classifier from (C, T, D) prompt embeddings, applied to (N, D) image
    embeddings (normalised here), scored against (N,) labels."""
    weights = class_weights(prompt_embeddings)
    logits = F.normalize(image_embeddings.float(), dim=-1) @ weights.T
    return classification_metrics(logits, labels)


def _recall(queries: torch.Tensor, keys: torch.Tensor, hit, ks: tuple[int, ...], block: int):
    """Per query, whether hit(rows, top_k_indices) holds within the top k, for each k."""
    kmax = min(max(ks), len(keys))
    found = {k: [] for k in ks}
    for start in range(0, len(queries), block):
        top = (queries[start : start + block] @ keys.T).topk(kmax, dim=1).indices
        rows = torch.arange(start, start + len(top), device=top.device)
        good = hit(rows, top)  # (rows, kmax): whether each retrieved key is a positive
        for k in ks:
            found[k].append(good[:, :k].any(1))
    return {k: torch.cat(v).float().mean().item() for k, v in found.items()}


@torch.no_grad()
def retrieval_metrics(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                      text_image: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                      block: int = 1024) -> dict[str, float]:  # fmt: skip
    """clip_benchmark's image_retrieval_recall@k (text -> image) and text_retrieval_recall@k
    (image -> text) for each k, and DataComp's mean_recall@1. text_image: (M,) the index of each
    caption's image in image_embeddings (N, D); text_embeddings (M, D)."""
    n, m = len(image_embeddings), len(text_embeddings)
    if text_image.shape != (m,):
        raise ValueError(f"text_image must be ({m},), got {tuple(text_image.shape)}")
    if m and (text_image.min() < 0 or text_image.max() >= n):
        raise ValueError(f"text_image holds an index outside [0, {n})")
    img = F.normalize(image_embeddings.float(), dim=-1)
    txt = F.normalize(text_embeddings.float(), dim=-1)
    text_image = text_image.to(img.device)
    t2i = _recall(txt, img, lambda rows, top: top == text_image[rows, None], ks, block)
    i2t = _recall(img, txt, lambda rows, top: text_image[top] == rows[:, None], ks, block)
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = t2i[k]
        out[f"text_retrieval_recall@{k}"] = i2t[k]
    if 1 in ks:
        out["mean_recall@1"] = (t2i[1] + i2t[1]) / 2
    return out


__all__ = ["class_weights", "classification_metrics", "retrieval_metrics", "zero_shot_metrics"]
