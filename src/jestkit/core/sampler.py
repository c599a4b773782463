"""The blocked joint sampler (docs/design.md, "The joint sampler") and sampling without
replacement.

Chunk by chunk, c candidates are drawn without replacement with probability proportional to
exp(g(k | C) / temperature), by Gumbel-top-k: adding independent Gumbel noise to the logits and
taking the top c draws an ordered sample exactly as c successive softmax draws would. Fresh noise
is drawn for every chunk. temperature = 0 is greedy: the top c gains, no noise.

Gain scale: for the sigmoid loss g(k | C) sums 2|C| + 1 pair terms, so with the paper's
temperature 1 on raw gains the sampler grows greedier chunk by chunk. normalize_gains=True divides
the gains by |C| + 1 (the batch size after adding k), which keeps their scale fixed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from jestkit.core.validate import (
    check_bool,
    check_counts,
    check_generator,
    check_int,
    check_temperature,
    check_tensor,
)


def chunk_sizes(b: int, n_chunks: int) -> list[int]:
    """Split b into n_chunks sizes that differ by at most one, larger first."""
    n_chunks = check_int("n_chunks", n_chunks)
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
    wide = scores.double()  # temperatures down to 1e-30 stay finite (core.validate)
    noise = gumbel_noise(n if size is None else size, generator, wide)
    return wide / temperature + noise[offset : offset + n]


def check_scores(scores: torch.Tensor) -> None:
    """Scores the sampler can draw from: NaN (gains that overflowed) is an error, never drawn."""
    if bool(torch.isnan(scores).any()):
        raise ValueError(
            f"{int(torch.isnan(scores).sum())} of {scores.shape[0]} selection scores are NaN "
            f"(the gains overflowed: embeddings or losses too large); refusing to select"
        )


def check_selection(idx: torch.Tensor, b: int) -> torch.Tensor:
    """`idx` as the sampler must return it: b distinct positions."""
    n_distinct = int(torch.unique(idx).numel())
    if idx.numel() != b or n_distinct != b or (b > 0 and int(idx.min()) < 0):
        raise RuntimeError(
            f"the selection is not b = {b} distinct examples: got {idx.numel()} positions, "
            f"{n_distinct} distinct; refusing to train on repeats"
        )
    return idx


def sample_without_replacement(
    scores: torch.Tensor,
    k: int,
    temperature: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """k indices drawn without replacement with p proportional to exp(scores / temperature),
    in draw order; temperature 0 takes the top k. -inf scores are never drawn; NaN scores
    and fewer than k drawable ones are errors."""
    check_tensor("scores", scores)
    k, temperature = check_int("k", k, 0), check_temperature(temperature)
    check_generator("generator", generator)
    check_scores(scores)
    drawable = int((scores > float("-inf")).sum())
    if drawable < k:
        raise ValueError(f"cannot draw {k} of {drawable} candidates (the rest are excluded)")
    perturbed = perturbed_scores(scores, temperature, generator)
    check_scores(perturbed)
    return check_selection(torch.topk(perturbed, k).indices, k)


def joint_sample(
    state,
    b: int,
    n_chunks: int = 16,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    normalize_gains: bool = False,
    *,
    first_scores: torch.Tensor | None = None,
    draw: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    add: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Select b candidates chunk by chunk from a gain state (jestkit.core.gains); the b positions
    in selection order. The one chunk loop of jestkit, for one process and for many.

    The first chunk is drawn from `first_scores` (default state.first_scores()), each later one
    from state.gains() over the candidates not yet selected. The state may hold one shard of the
    super-batch (positions state.offset .. state.offset + state.size - 1); the two hooks say how
    the shards agree, and default to one process holding everything:

    draw(scores, c): the c chosen positions in the whole super-batch, in draw order (default:
        Gumbel-top-c of this state's scores, sample_without_replacement);
    add(local, chunk): grow the state by the chunk, given this state's own members of it
        (`local`, positions within the state) and the whole chunk's positions (default:
        state.add(local)).
    """
    check_counts(b, state.size if draw is None else b, n_chunks)  # one process: b of its B
    temperature = check_temperature(temperature)
    check_generator("generator", generator)
    check_bool("normalize_gains", normalize_gains)
    if draw is None:

        def draw(scores: torch.Tensor, c: int) -> torch.Tensor:
            return sample_without_replacement(scores, c, temperature, generator)

    if add is None:

        def add(local: torch.Tensor, chunk: torch.Tensor) -> None:
            state.add(local)

    offset = getattr(state, "offset", 0)
    scores = state.first_scores() if first_scores is None else first_scores
    taken = torch.zeros(state.size, dtype=torch.bool, device=scores.device)
    chosen, n_taken = [], 0
    for m, c in enumerate(chunk_sizes(b, n_chunks)):
        if m > 0:
            scores = state.gains()
        if normalize_gains:
            scores = scores / (n_taken + 1)
        check_scores(scores)
        scores = scores.masked_fill(taken, float("-inf"))
        idx = draw(scores, c)
        local = idx[(idx >= offset) & (idx < offset + state.size)] - offset  # in chunk order
        taken[local] = True
        n_taken += c
        chosen.append(idx)
        if m + 1 < n_chunks:
            add(local, idx)
    return check_selection(torch.cat(chosen), b)
