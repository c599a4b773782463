"""The pure core: gains, samplers, policies and losses. Tensors in, indices out; no I/O, no
globals."""

from jestkit.core.gains import PerExampleGains, SigmoidGains, SoftmaxGains, Weighted
from jestkit.core.losses import LOSSES, gain_state
from jestkit.core.outputs import Embeddings
from jestkit.core.policies import METHODS, POLICIES, SelectionConfig, Selector, select
from jestkit.core.sampler import chunk_sizes, joint_sample, sample_without_replacement

__all__ = [
    "METHODS",
    "POLICIES",
    "LOSSES",
    "Embeddings",
    "PerExampleGains",
    "SelectionConfig",
    "Selector",
    "SigmoidGains",
    "SoftmaxGains",
    "Weighted",
    "chunk_sizes",
    "gain_state",
    "joint_sample",
    "sample_without_replacement",
    "select",
]
