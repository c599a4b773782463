"""`jestkit train` on shards under torchrun (gloo processes): each rank reads its own streams,
in DataLoader workers, and the run selects and trains as one process does on the same
super-batches (6 streams: the same on 1, 2 and 3 ranks); a run killed and resumed with workers
on 2 ranks is the uninterrupted one; a rank whose shards are all bad stops every rank with its
message."""

from __future__ import annotations

import pytest
import torch
from dropin.test_distributed import spawn, values_of
from helpers import MODEL
from shard_files import write_shards

from jestkit import SelectionConfig
from jestkit.data.parallel import StreamStopped
from jestkit.data.shards import TooManyBadSamples
from jestkit.data.stream import ShardsConfig
from jestkit.dropin.cache import ReferenceCache
from jestkit.dropin.distributed import Distributed
from jestkit.engine.config import TrainConfig, TrainingConfig
from jestkit.engine.loop import Trainer
from jestkit.own.run import OwnModel, OwnRun, build_learner, build_source
from jestkit.own.score import score_shards
from jestkit.own.train import train_own

# b = 12 of B = 60: both split over 1, 2 and 3 ranks, and B over 6 streams (10 each)
CONFIG = TrainConfig(
    selection=SelectionConfig(policy="hard_learner", method="joint", n_chunks=3,
                              filter_ratio=0.8),  # fmt: skip
    training=TrainingConfig(batch_size=12, steps=4, eval_every=4, checkpoint_every=2),
)


def _trainer(ctx, pattern, workers, out):
    run = OwnRun(ShardsConfig(pattern=pattern, buffer_size=16, streams=6, workers=workers,
                              vocab_size=512))  # fmt: skip
    model = build_learner(run, MODEL, "sigmoid", None, CONFIG.training.seed)
    source = build_source(run, model, ctx, CONFIG.training.checkpoint_every)
    return Trainer(model, CONFIG, source, out_dir=out, progress=False, dist=ctx), source


def _train(ctx, pattern, workers, out, stop_at=None):
    """4 steps; with stop_at, stopped there (checkpointed) and resumed by a fresh trainer."""
    trainer, source = _trainer(ctx, pattern, workers, out)
    trainer.run(stop_at=stop_at)
    source.close()
    if stop_at is not None:
        trainer, source = _trainer(ctx, pattern, workers, out)
        assert trainer.resume() and trainer.step == stop_at
        trainer.run()
        source.close()
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    return trainer.selected_ids, trainer.losses, state


def _bad_rank(ctx, pattern, out):
    """Rank 1's stream holds only undecodable samples."""
    run = OwnRun(ShardsConfig(pattern=pattern, buffer_size=0, workers=1, shuffle_shards=False,
                              vocab_size=512))  # fmt: skip
    try:
        train_own(run, MODEL, CONFIG, out, progress=False, dist=ctx)
    except (StreamStopped, TooManyBadSamples) as e:
        return type(e).__name__, str(e)
    return "no error", ""


def _like_torchrun():
    """torchrun starts ranks with exec, so their DataLoader workers fork (Linux's default);
    these ranks were spawned, which makes their workers spawn too (slow to start): fork, as
    under torchrun. (tests/data/test_parallel.py's workers fork as well.)"""
    import multiprocessing

    multiprocessing.set_start_method("fork", force=True)


def _score(ctx, pattern, checkpoint, out):
    """`jestkit score`'s build with a jestkit checkpoint as the reference."""
    run = OwnRun(ShardsConfig(pattern=pattern, vocab_size=512), OwnModel(reference=checkpoint))
    return score_shards(run, MODEL, "sigmoid", out, batch_size=16, progress=False, dist=ctx,
                        rows_per_part=32)  # fmt: skip


def _on_2(ctx, pattern, bad_pattern, out):
    _like_torchrun()
    resumed = _train(ctx, pattern, 1, out, stop_at=2)
    torch.distributed.barrier()  # rank 0 has written the final checkpoint, scored next
    return {"resumed": resumed,
            "score": _score(ctx, pattern, str(out / "checkpoint.pt"), out / "ref"),
            "bad": _bad_rank(ctx, bad_pattern, out / "bad")}  # fmt: skip


def _on_3(ctx, pattern, out):
    _like_torchrun()
    return _train(ctx, pattern, 2, out)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parallel")
    good = write_shards(folder / "good", shards=6, per_shard=20)
    # rank 0: 40 good samples (a stream gives 30 per super-batch); rank 1: none good
    bad = write_shards(folder / "bad", shards=2, per_shard=40, bad=tuple(range(40, 80)))
    return good, bad, folder


@pytest.fixture(scope="module")
def two(shards):
    good, bad, folder = shards
    return values_of(spawn(_on_2, 2, folder, good, bad, folder / "two", deadline_s=150))


def test_ranks_and_workers_select_and_train_as_one_process(shards, two):
    good, bad, folder = shards
    one = _train(Distributed(), good, 0, folder / "one")
    three = values_of(spawn(_on_3, 3, folder, good, folder / "three", deadline_s=150))
    want_ids, want_losses, want_state = one
    assert len(want_ids) == 4 and len({i for ids in want_ids for i in ids}) > 12
    runs = [r["resumed"] for r in two] + three
    for ids, losses, state in runs:
        assert ids == want_ids  # the same selections, in order, on every rank
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(want_losses), atol=1e-4,
                                   rtol=1e-4)  # fmt: skip
        # AdamW's first steps move a weight by ~lr * sign(gradient), and float noise can flip
        # the sign of a near-zero gradient: the bound is the learning rate (test_distributed)
        diff = max((state[k] - v).abs().max().item() for k, v in want_state.items())
        assert diff < 2e-3
    (kind0, msg0), (kind1, msg1) = (r["bad"] for r in two)
    assert kind1 == "TooManyBadSamples" and "shards-0001.tar" in msg1
    assert kind0 == "StreamStopped" and msg0.startswith("the data stream of rank 1 failed")
    assert msg1 in msg0  # one message on every rank


def test_score_on_2_ranks_builds_the_one_process_cache(shards, two):
    """The 2-rank build (each rank listing half the shards, then scoring its parts) writes the
    cache one process writes, row for row."""
    good, _, folder = shards
    checkpoint = str(folder / "two" / "checkpoint.pt")
    info = _score(Distributed(), good, checkpoint, folder / "ref1")
    assert [r["score"] for r in two] == [info, info] and info["samples"] == 120
    one = ReferenceCache.open(folder / "ref1" / "cache", info["model_fingerprint"],
                              info["data_fingerprint"])  # fmt: skip
    both = ReferenceCache.open(folder / "two" / "ref" / "cache", info["model_fingerprint"],
                               info["data_fingerprint"])  # fmt: skip
    ids = list(one.ids())
    assert ids == list(both.ids()) and len(ids) == 120
    for name, column in one.lookup(ids, ["image", "text"]).items():
        torch.testing.assert_close(both.lookup(ids, [name])[name], column, atol=1e-6, rtol=1e-5)
