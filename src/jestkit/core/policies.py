"""Selection policies, one table: what each scores with and with which weights; one call for one
selection, and a reusable Selector.

| policy          | batch score s(S)                        | weights (learner, reference) |
| uniform         | none: b of B at random                  | (0, 0)                       |
| hard_learner    | loss(S | learner)                       | (+1, 0)                      |
| easy_reference  | -loss(S | reference)                    | (0, -1)                      |
| learnability    | loss(S | learner) - loss(S | reference) | (+1, -1)                     |

method 'joint' chooses the sub-batch chunk by chunk from exact marginal gains;
'independent' scores each example on its own (its loss against the whole super-batch for the
contrastive losses) and samples b without replacement (temperature 0: the top b).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Literal

import torch

from jestkit.core.gains import Weighted
from jestkit.core.losses import LOSSES, gain_state, get_loss
from jestkit.core.outputs import Outputs
from jestkit.core.sampler import joint_sample, sample_without_replacement
from jestkit.core.validate import (
    check_bool,
    check_counts,
    check_filter_ratio,
    check_generator,
    check_generator_state,
    check_int,
    check_pair,
    check_seed,
    check_state,
    check_temperature,
    device_of,
    selected_size,
)


@dataclass(frozen=True)
class Policy:
    """One row of the policy table: the weights of the learner's and the reference's losses."""

    name: str
    learner: float
    reference: float

    @property
    def uses_learner(self) -> bool:
        """Whether a selection scores the super-batch with the learner."""
        return self.learner != 0

    @property
    def uses_reference(self) -> bool:
        """Whether a selection reads the reference's outputs."""
        return self.reference != 0

    @property
    def scored(self) -> bool:
        """Whether any model scores (uniform: none)."""
        return self.uses_learner or self.uses_reference


POLICY_TABLE = {
    p.name: p
    for p in (
        Policy("uniform", 0.0, 0.0),
        Policy("hard_learner", 1.0, 0.0),
        Policy("easy_reference", 0.0, -1.0),
        Policy("learnability", 1.0, -1.0),
    )
}
POLICIES = tuple(POLICY_TABLE)
METHODS = ("joint", "independent")


def get_policy(name: str) -> Policy:
    """The table's row for `name`; a ValueError naming the choices otherwise."""
    if not isinstance(name, str) or name not in POLICY_TABLE:
        raise ValueError(f"policy must be one of {POLICIES}, got {name!r}")
    return POLICY_TABLE[name]


@dataclass(frozen=True)
class SelectionConfig:
    """How to choose b = round((1 - filter_ratio) * B) of a super-batch. Paper defaults.

    Attributes:
        filter_ratio: share of the super-batch left out: b = round((1 - filter_ratio) * B)
        policy: uniform, hard_learner (learner loss), easy_reference (-reference loss) or
            learnability (learner - reference)
        method: joint (chunk by chunk from exact marginal gains) or independent (each example
            scored on its own)
        loss: sigmoid (SigLIP), softmax (CLIP, both directions) or per_example
        n_chunks: chunks of the joint sampler; b need not divide evenly
        temperature: chunk k is drawn with p proportional to exp(gain / temperature); 0 is greedy
        normalize_gains: divide the gains by |C| + 1, the batch size after adding k
        block_size: rows of pair terms computed at once: memory O(block_size * B)
    """

    filter_ratio: float = 0.8
    policy: Literal[POLICIES] = "learnability"
    method: Literal[METHODS] = "joint"
    loss: Literal[LOSSES] = "sigmoid"
    n_chunks: int = 16
    temperature: float = 1.0
    normalize_gains: bool = False
    block_size: int = 512  # rows of pair terms computed at once: memory O(block_size * B)

    def __post_init__(self):
        get_policy(self.policy)
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        get_loss(self.loss)
        # numbers of any kind (numpy's, 0-d tensors) are kept as the plain float / int checked
        checked = {
            "filter_ratio": check_filter_ratio(self.filter_ratio),
            "temperature": check_temperature(self.temperature),
            "n_chunks": check_int("n_chunks", self.n_chunks),
            "block_size": check_int("block_size", self.block_size),
            "normalize_gains": check_bool("normalize_gains", self.normalize_gains),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # frozen: set once, here


def selection_config(config: SelectionConfig | None, overrides: Mapping) -> SelectionConfig:
    """`config` (default SelectionConfig()) with the keyword overrides replacing its fields."""
    if config is None:
        config = SelectionConfig()
    elif not isinstance(config, SelectionConfig):
        hint = ": pass SelectionConfig(**config), or its fields as keywords" \
            if isinstance(config, Mapping) else ""  # fmt: skip
        raise TypeError(
            f"config must be a jestkit.SelectionConfig (or None), got {type(config).__name__}{hint}"
        )
    names = [f.name for f in fields(SelectionConfig)]
    unknown = [k for k in overrides if k not in names]
    if unknown:
        raise TypeError(f"unknown selection setting {unknown[0]!r}; the settings are {names}")
    return replace(config, **overrides)


def weighted_outputs(config: SelectionConfig, learner, reference) -> list[Weighted]:
    """The outputs the config's policy scores with, with their weights; a ValueError when one
    it needs is None."""
    policy = get_policy(config.policy)
    models = []
    for name, out, w in (("learner", learner, policy.learner),
                         ("reference", reference, policy.reference)):  # fmt: skip
        if w == 0:
            continue
        if out is None:
            raise ValueError(f"policy {config.policy!r} needs the {name}'s outputs; got None")
        models.append(Weighted(out, w))
    return models


def checked_selected_size(config: SelectionConfig, size: int, batch_size: int | None) -> int:
    """b for a super-batch of `size`, with the counts checked against the config."""
    b = selected_size(size, config.filter_ratio)
    joint = config.method == "joint" and get_policy(config.policy).scored
    check_counts(b, size, config.n_chunks if joint else 1)
    if batch_size is not None and batch_size != size:
        raise ValueError(f"batch_size={batch_size} but the outputs hold B = {size} candidates")
    return b


def uniform_indices(size: int, b: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """b of `size` uniformly at random, drawn on the generator's device, moved to `device`."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randperm(size, generator=generator, device=gen_device)[:b]
    return idx if device is None else idx.to(device)


def select(
    learner: Outputs | None = None,
    reference: Outputs | None = None,
    config: SelectionConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    naive: bool = False,
    **overrides,
) -> torch.Tensor:
    """Indices (in selection order) of the b examples of the super-batch to train on.

    learner, reference: (B,) per-example losses for loss='per_example', else jestkit.Embeddings.
    config: a SelectionConfig; keyword overrides (filter_ratio=..., policy=...) replace its fields.
    batch_size: B, needed only for the uniform policy when no outputs are given.
    naive: use the full B x B oracle (tests and benchmarks only).
    """
    config = selection_config(config, overrides)
    check_generator("generator", generator)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size)
    scored = get_policy(config.policy).scored
    models = weighted_outputs(config, learner, reference) if scored else []
    if not scored and learner is None and reference is None:
        if batch_size is None:
            raise ValueError("uniform selection needs batch_size (or any model's outputs)")
        size, device = batch_size, None
    else:
        size = check_pair(learner, reference, get_loss(config.loss))
        device = device_of(learner if learner is not None else reference)
    b = checked_selected_size(config, size, batch_size)
    if not scored:
        return uniform_indices(size, b, generator, device)

    state = gain_state(config.loss, models, config.block_size, naive=naive)
    if config.method == "independent":
        scores = state.independent_scores()
        return sample_without_replacement(scores, b, config.temperature, generator)
    return joint_sample(
        state, b, config.n_chunks, config.temperature, generator, config.normalize_gains
    )


class Selector:
    """A selection configuration and its random generator, reused step after step.

    >>> selector = Selector(SelectionConfig(filter_ratio=0.8, loss="sigmoid"), seed=0)
    >>> idx = selector(learner_embeddings, reference_embeddings)   # doctest: +SKIP

    seed None (and no generator) seeds the generator from the system's entropy.
    jestkit.dropin.distributed.GlobalSelector is this class selecting across ranks.
    """

    def __init__(
        self,
        config: SelectionConfig | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        **overrides,
    ):
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        self.config = selection_config(config, overrides)
        check_generator("generator", generator)
        if seed is not None:
            seed = check_seed("seed", seed)
        if generator is None:
            generator = torch.Generator(device=self.generator_device())
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        self.generator = generator

    def generator_device(self) -> torch.device | str:
        return "cpu"

    def n_selected(self, batch_size: int) -> int:
        """b for a super-batch of batch_size candidates."""
        return selected_size(batch_size, self.config.filter_ratio)

    def __call__(
        self, learner: Outputs | None = None, reference: Outputs | None = None, **kwargs
    ) -> torch.Tensor:
        return select(learner, reference, self.config, generator=self.generator, **kwargs)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from state_dict(); anything else is refused, and changes nothing."""
        state = check_state("state", state, ("generator",), "Selector")
        self.generator.set_state(
            check_generator_state("state['generator']", state["generator"], self.generator)
        )
