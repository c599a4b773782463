"""The blocked joint sampler (DESIGN.md section 1.3) and sampling without replacement.

Chunk by chunk, c candidates are drawn without replacement with probability proportional to
exp(g(k | C) / temperature), by Gumbel-top-k: adding independent Gumbel noise to the logits and
taking the top c draws an ordered sample exactly as c successive softmax draws would. Fresh noise
is drawn for every chunk. temperature = 0 is greedy: the top c gains, no noise.

Gain scale: for the sigmoid loss g(k | C) sums 2|C| + 1 pair terms, so with the paper's
temperature 1 on raw gains the sampler grows greedier chunk by chunk. normalize_gains=True divides
the gains by |C| + 1 (the batch size after adding k), which keeps their scale fixed.
"""

from __future__ import annotations

import torch


def chunk_sizes(b: int, n_chunks: int) -> list[int]:
    """Split b into n_chunks sizes that differ by at most one, larger first."""
    base, extra = divmod(b, n_chunks)
    return [base + 1] * extra + [base] * (n_chunks - extra)


def gumbel_noise(n: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """n standard Gumbel samples, drawn in float64 on the generator's device, moved to `like`."""
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    u = u.clamp_(min=torch.finfo(torch.float64).tiny)
    return (-torch.log(-torch.log(u))).to(device=like.device, dtype=like.dtype)


def perturbed_scores(
    scores: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None,
    size: int | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """scores / temperature + standard Gumbel noise: the top k of the result is a draw of k
    without replacement (temperature 0: the scores themselves, no noise drawn).

    size, offset: `scores` are candidates offset .. offset + len(scores) - 1 of a super-batch of
    `size` (one shard of it): the noise of the whole super-batch is drawn and this slice used, so
    every shard perturbs its candidates exactly as one process holding everything would.
    """
    if temperature == 0:
        return scores
    n = scores.shape[0]
    noise = gumbel_noise(n if size is None else size, generator, scores)
    return scores / temperature + noise[offset : offset + n]


def sample_without_replacement(
    scores: torch.Tensor,
    k: int,
    temperature: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """k indices drawn without replacement with p proportional to exp(scores / temperature),
    in draw order; temperature 0 takes the top k. -inf scores are never drawn."""
    return torch.topk(perturbed_scores(scores, temperature, generator), k).indices


def joint_sample(
    state,
    b: int,
    n_chunks: int = 16,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    normalize_gains: bool = False,
) -> torch.Tensor:
    """Select b of state.size candidates chunk by chunk from a gain state (jestkit.core.gains).

    The first chunk is drawn from state.first_scores(), each later one from state.gains() over
    the candidates not yet selected. Returns the b indices in selection order.
    """
    chosen = []
    scores = state.first_scores()
    taken = torch.zeros(state.size, dtype=torch.bool, device=scores.device)
    n_taken = 0
    for m, c in enumerate(chunk_sizes(b, n_chunks)):
        if m > 0:
            scores = state.gains()
        if normalize_gains:
            scores = scores / (n_taken + 1)
        scores = scores.masked_fill(taken, float("-inf"))
        idx = sample_without_replacement(scores, c, temperature, generator)
        taken[idx] = True
        n_taken += c
        chosen.append(idx)
        if m + 1 < n_chunks:
            state.add(idx)
    return torch.cat(chosen)
