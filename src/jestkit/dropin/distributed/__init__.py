"""JEST on many processes (torchrun): global selection, fixed per-rank batches, sharded cache.

ctx = setup()                                   # from torchrun's environment
model = wrap_model(model, ctx)                  # DistributedDataParallel
selector = GlobalSelector(config, seed=0, group=ctx.group, device=ctx.device)
positions = selector(learner_shard, reference_shard)    # same on every rank
batch = redistribute(shard_data, positions, ctx.group)  # b / world_size rows on each rank
"""

from jestkit.dropin.distributed.agree import RankStopped, agree, agreed
from jestkit.dropin.distributed.batch import (
    assign_ranks,
    per_rank_batch,
    rank_positions,
    redistribute,
)
from jestkit.dropin.distributed.cache import build_cache_sharded
from jestkit.dropin.distributed.comm import Traffic
from jestkit.dropin.distributed.group import (
    Distributed,
    all_gather_with_grad,
    average_gradients,
    broadcast_parameters,
    setup,
    teardown,
    unwrap,
    wrap_model,
)
from jestkit.dropin.distributed.select import GlobalSelector, select_global

__all__ = [
    "Distributed",
    "GlobalSelector",
    "RankStopped",
    "Traffic",
    "agree",
    "agreed",
    "all_gather_with_grad",
    "assign_ranks",
    "average_gradients",
    "broadcast_parameters",
    "build_cache_sharded",
    "per_rank_batch",
    "rank_positions",
    "redistribute",
    "select_global",
    "setup",
    "teardown",
    "unwrap",
    "wrap_model",
]
