"""What predicts which method pays on a pool, measured from the reference's embeddings.

Pure tensor functions (no I/O, no model): the reference's image and text embeddings of the pool
(its cache: the pass the filter and JEST need anyway), of a held-out set of matched pairs, and of
the class prompts go in; numbers come out.

* `matched_share`: the share of the pool whose caption belongs to its image. A pool pair's
  image-caption similarity is drawn from the matched pairs' distribution (the held-out set's,
  matched by construction) or from an unmatched one (the pool's images against other pool
  pairs' captions, shuffled, stands for it); the pairs above the cut that best separates the
  two are counted and the count corrected for both distributions' rates above it.
* `kept_precision`: the matched share of what a static filter keeps: the held-out pairs above
  the filter's cut, times the matched share, over the share kept.
* `near_duplicate_share`: the share of sampled pool pairs with another pool pair at cosine
  similarity >= a threshold (a near-copy; pairs: image and text embeddings side by side).
* `concept_shares`: the pool's images assigned to the held-out set's classes by the reference's
  zero-shot (its nearest class prompt), and how concentrated they are.
* `revisits`: how many times a run of `steps` batches of `batch_size` goes over `kept` pairs.
* `pool_measurements`: all of them at once, as the plan records them (both pools' sources).
"""

from __future__ import annotations

import math

import torch

from jestkit.core.filter import keep_top, similarity

SAMPLE = 2000  # pool pairs the near-duplicate search reads (and held-out pairs, at most)


def _check_pairs(image: torch.Tensor, text: torch.Tensor, what: str) -> None:
    if image.dim() != 2 or image.shape != text.shape or len(image) < 2:
        raise ValueError(f"{what}: image and text embeddings must both be (N >= 2, d), got "
                         f"{tuple(image.shape)} and {tuple(text.shape)}")  # fmt: skip


def shuffled_similarity(image: torch.Tensor, text: torch.Tensor, generator: torch.Generator,
                        groups: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Each image's similarity to another row's caption: the similarity of pairs that do not
    belong together, on the pool's own images and captions. groups (N,): the other row is drawn
    from another group (e.g. the image's zero-shot class), so that a caption of the same kind
    of thing, which would belong, is never taken for noise."""
    _check_pairs(image, text, "shuffled_similarity")
    n = len(image)
    other = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n
    if groups is not None:
        if len(torch.unique(groups)) < 2:
            raise ValueError("shuffled_similarity: groups must have at least two values")
        for _ in range(100):
            clash = groups[other] == groups
            if not clash.any():
                break
            other[clash] = torch.randint(n, (int(clash.sum()),), generator=generator)
        keep = groups[other] != groups
        return similarity(image[keep], text[other[keep]])
    return similarity(image, text[other])


def matched_share(pool: torch.Tensor, matched: torch.Tensor, unmatched: torch.Tensor) -> float:
    """The share of pool pairs that look matched, from the similarities (1-D) of the pool's
    pairs, of matched pairs (a held-out set) and of unmatched ones (shuffled): count the pool
    pairs above the cut that best separates the two (the largest true-positive minus
    false-positive rate), then correct the count for both rates; clipped to [0, 1]. Pairs below
    every unmatched one (captions about nothing) count as unmatched, as they should."""
    for name, s in (("pool", pool), ("matched", matched), ("unmatched", unmatched)):
        if s.dim() != 1 or len(s) == 0:
            raise ValueError(f"{name} similarities must be a non-empty 1-D tensor")
    cuts = torch.quantile(torch.cat([matched, unmatched]).float(), torch.linspace(0, 1, 201))
    tpr = (matched.float()[None, :] >= cuts[:, None]).float().mean(1)
    fpr = (unmatched.float()[None, :] >= cuts[:, None]).float().mean(1)
    best = int((tpr - fpr).argmax())
    if tpr[best] - fpr[best] <= 0.05:
        raise ValueError("the reference scores held-out matched pairs no higher than shuffled "
                         "ones: it cannot tell noise from signal on this data")  # fmt: skip
    above = (pool.float() >= cuts[best]).float().mean()
    return float(((above - fpr[best]) / (tpr[best] - fpr[best])).clamp(0.0, 1.0))


def kept_precision(pool: torch.Tensor, matched: torch.Tensor, share: float, keep: float) -> float:
    """The estimated matched share of the pairs a filter keeping the top `keep` of the pool (by
    similarity) keeps: share * P(matched pair above the cut) / keep, at most 1."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    n = max(1, round(keep * len(pool)))
    cut = torch.sort(pool.float(), descending=True).values[n - 1]
    above = float((matched.float() >= cut).float().mean())
    return min(1.0, share * above / keep)


def near_duplicate_share(sample: torch.Tensor, pool: torch.Tensor, sample_rows: torch.Tensor,
                         threshold: float = 0.97, block: int = 1024) -> float:  # fmt: skip
    """The share of `sample` (rows `sample_rows` of `pool`, unit-norm image embeddings) with
    another pool row at cosine similarity >= threshold; blocks of `block` sample rows."""
    if sample.dim() != 2 or pool.dim() != 2 or sample.shape[1] != pool.shape[1]:
        raise ValueError("sample and pool must be (n, d) and (N, d) embeddings")
    if len(sample_rows) != len(sample):
        raise ValueError("sample_rows must give the pool row of every sample row")
    hits = 0
    for start in range(0, len(sample), block):
        sims = sample[start:start + block].float() @ pool.float().T
        rows = sample_rows[start:start + block]
        sims[torch.arange(len(rows)), rows] = -2.0  # not itself
        hits += int((sims >= threshold).any(1).sum())
    return hits / len(sample)


def zero_shot_classes(image: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """(N,) each image's (N, d) nearest class prompt (C, d)."""
    if image.dim() != 2 or prompts.dim() != 2 or image.shape[1] != prompts.shape[1]:
        raise ValueError("image and prompt embeddings must be (N, d) and (C, d)")
    return (image.float() @ prompts.float().T).argmax(1)


def concept_shares(image: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """(C,) the share of the images (N, d) whose nearest class prompt (C, d) is each class."""
    nearest = zero_shot_classes(image, prompts)
    return torch.bincount(nearest, minlength=len(prompts)).float() / len(image)


def concentration(shares: torch.Tensor) -> dict[str, float]:
    """How concentrated class shares are: the normalised entropy (1: balanced, 0: one class)
    and the rarest class's share over the balanced share 1/C (1: balanced, 0: a class absent)."""
    p = shares.float().clamp(min=0)
    p = p / p.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum()) / math.log(len(p))
    return {"entropy": entropy, "rarest_over_balanced": float(p.min() * len(p))}


def revisits(steps: int, batch_size: int, kept: int) -> float:
    """How many times `steps` batches of `batch_size` go over `kept` pairs."""
    if kept < 1:
        raise ValueError(f"kept must be >= 1, got {kept}")
    return steps * batch_size / kept


def pool_measurements(image: torch.Tensor, text: torch.Tensor, held: tuple,
                      prompts: torch.Tensor | None, keep: float = 0.3, sample: int = SAMPLE,
                      seed: int = 0) -> dict:  # fmt: skip
    """The measurements above from the reference's embeddings of the pool's pairs (all of them,
    or a random sample), of held-out matched pairs (image, text) and of the class prompts (None:
    no classes known, so no concept shares, and unmatched pairs drawn from any other row); with
    'flops', what the near-duplicate search cost."""
    g = torch.Generator().manual_seed(seed)
    image, text = image.float(), text.float()
    pool_sim = similarity(image, text)
    held_sim = similarity(*held)
    classes = None if prompts is None else zero_shot_classes(image, prompts)
    if classes is not None and len(torch.unique(classes)) < 2:
        classes = None  # every image nearest one class: no other class to draw captions from
    unmatched = shuffled_similarity(image, text, g, classes)  # a caption of another class
    share = matched_share(pool_sim, held_sim, unmatched)
    kept = keep_top(pool_sim, keep)
    picks = torch.randperm(len(image), generator=g)[: min(sample, len(image))]
    pair = torch.cat([image, text], 1) / 2**0.5  # cosine of pairs: the mean of both cosines
    concepts = {"concepts_pool": None, "concepts_kept": None}
    if prompts is not None:
        concepts = {"concepts_pool": concentration(concept_shares(image, prompts)),
                    "concepts_kept": concentration(concept_shares(image[kept], prompts))}
    return {
        "matched_share": share,
        "kept_precision": kept_precision(pool_sim, held_sim, share, keep),
        "keep": keep,
        "near_duplicate_share": near_duplicate_share(pair[picks], pair, picks),
        **concepts,
        "flops": 2 * len(picks) * len(image) * pair.shape[1],
    }
