"""jestkit.data.parallel: shards dealt to streams, split over ranks then DataLoader workers. The
ranks are simulated in one process (each rank's source built with its rank; reading needs no
process group): every sample is read once per epoch by one rank and one worker, the one the plan
names; the super-batches are the same on any number of ranks and workers; resume with workers
is exact; bad numbers and bad shards are clear errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from shard_files import sample, write_shards

from jestkit.data.parallel import StreamPlan
from jestkit.data.shards import ShardPoolConfig, TooManyBadSamples, epoch_shards
from jestkit.data.stream import HashedWords, ShardsConfig, grayscale

N_SHARDS, PER_SHARD, STREAMS, B = 6, 20, 6, 60  # c = 10 samples per stream and step
TOKENIZE = HashedWords(512, 8)


def _write_parquet(folder) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    rng = np.random.default_rng(0)
    for t in range(N_SHARDS):
        n = [t * PER_SHARD + i for i in range(PER_SHARD)]
        rows = [sample(i, rng) for i in n]
        table = pa.table({"image": [png for png, _ in rows], "caption": [c for _, c in rows],
                          "uid": [f"{i:032x}" for i in n]})  # fmt: skip
        pq.write_table(table, folder / f"part-{t}.parquet", row_group_size=8)
    return str(folder / "part-*.parquet")


@pytest.fixture(scope="module", params=["tar", "parquet"])
def pattern(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "tar":
        return write_shards(folder, shards=N_SHARDS, per_shard=PER_SHARD)
    return _write_parquet(folder / "tables")


def _sources(pattern, world_size, workers, streams=STREAMS, buffer_size=8, **kw):
    config = ShardsConfig(pattern=pattern, buffer_size=buffer_size, streams=streams,
                          workers=workers)  # fmt: skip
    return [config.parallel(grayscale(28), TOKENIZE, rank, world_size, **kw)
            for rank in range(world_size)]  # fmt: skip


def _shard_ids(shard: int) -> set[str]:
    return {f"{shard * PER_SHARD + i:032x}" for i in range(PER_SHARD)}


def test_every_sample_once_per_epoch_and_the_same_super_batches_on_any_ranks_and_workers(
    pattern,
):
    """For 1, 2, 3 ranks x 0, 1, 2 workers (6 streams): the 3 super-batches drawn are the same
    samples in the same order; the first epoch's samples (2 steps of 10 from each stream's one
    shard) are every sample exactly once, each read by the rank and worker the plan names: rank
    r's streams are a contiguous block, worker w reads the block's streams w, w + K, ..."""
    one_shard = replace(ShardPoolConfig(seed=0, shuffle_shards=True), streams=STREAMS)
    shard_of = {s: epoch_shards(N_SHARDS, replace(one_shard, stream=s), 0) for s in
                range(STREAMS)}  # fmt: skip
    assert sorted(i for v in shard_of.values() for i in v) == list(range(N_SHARDS))
    expected = None
    for world_size in (1, 2, 3):
        for workers in (0, 1, 2):
            sources = _sources(pattern, world_size, workers)
            steps, readers = [], {}
            for _ in range(3):
                ids, images = [], []
                for rank, source in enumerate(sources):
                    mine = source.draw(B)
                    assert len(mine) == B // world_size and mine.images.shape[1:] == (1, 28, 28)
                    ids += mine.ids
                    images.append(mine.images)
                    for chunk in source.last_chunks:
                        for uid, epoch in zip(chunk["ids"], chunk["epochs"].tolist(), strict=True):
                            if epoch == 0:
                                readers.setdefault(uid, []).append((rank, chunk["worker"]))
                steps.append((ids, torch.cat(images)))
            for source in sources:
                source.close()
            every = set().union(*(_shard_ids(i) for i in range(N_SHARDS)))
            assert set(readers) == every and all(len(r) == 1 for r in readers.values())
            plan = StreamPlan(N_SHARDS, STREAMS, world_size, workers)
            for rank in range(world_size):
                block = plan.rank_streams(rank)
                for w in range(max(workers, 1)):
                    want = set().union(*(_shard_ids(shard_of[s][0]) for s in
                                         block[w :: max(workers, 1)]))  # fmt: skip
                    got = {uid for uid, r in readers.items() if r[0] == (rank, w)}
                    assert got == want, (world_size, workers, rank, w)
            if expected is None:
                expected = steps
            for (ids, images), (want_ids, want_images) in zip(steps, expected, strict=True):
                assert ids == want_ids, (world_size, workers)
                assert torch.equal(images, want_images)
    assert len(set(expected[0][0])) == B and expected[0][0] != expected[2][0]


def test_resume_with_workers_is_exact(pattern):
    """A state taken after 2 or 3 steps (2 workers, snapshots every 2 steps: the second is
    restored by replaying a step) continues with exactly the uninterrupted draws, into the next
    epoch; another worker count or stream count is refused, naming both."""
    (whole,) = _sources(pattern, 1, 2, streams=4, snapshot_every=2)
    want = [whole.draw(B).ids for _ in range(7)]  # 420 draws of 120 samples: 3 epochs
    whole.close()
    for cut in (2, 3):
        (first,) = _sources(pattern, 1, 2, streams=4, snapshot_every=2)
        assert [first.draw(B).ids for _ in range(cut)] == want[:cut]
        state = first.state_dict()
        first.close()
        (resumed,) = _sources(pattern, 1, 2, streams=4, snapshot_every=2)
        resumed.load_state_dict(state)
        assert [resumed.draw(B).ids for _ in range(cut, 7)] == want[cut:]
        resumed.close()
    (other,) = _sources(pattern, 1, 1, streams=4)
    with pytest.raises(ValueError, match=r"1 ranks x 2 workers reading 4 streams.*1 workers"):
        other.load_state_dict(state)
    (other,) = _sources(pattern, 1, 2, streams=2)
    with pytest.raises(ValueError, match="--shards.streams"):
        other.load_state_dict(state)


def test_bad_numbers_are_clear_errors(pattern):
    with pytest.raises(ValueError, match="6 shards cannot feed 8 streams"):
        _sources(pattern, 2, 4, streams=None)  # 2 ranks x 4 workers by default
    with pytest.raises(ValueError, match="does not split over 4 ranks"):
        _sources(pattern, 4, 1, streams=6)
    with pytest.raises(ValueError, match="3 ranks x 2 workers need at least 6 streams"):
        _sources(pattern, 3, 2, streams=3)
    (source,) = _sources(pattern, 1, 0, streams=4)
    with pytest.raises(ValueError, match="B = 30 does not split over 4 streams"):
        source.draw(30)


def test_a_stream_of_bad_shards_stops_the_run_with_its_message(tmp_path):
    """In a worker, a stream whose shard is all undecodable raises TooManyBadSamples with the
    pool's message (not the worker's traceback)."""
    pattern = write_shards(tmp_path, shards=2, per_shard=20, bad=tuple(range(20, 40)))
    config = ShardsConfig(pattern=pattern, buffer_size=0, workers=2, shuffle_shards=False)
    source = config.parallel(grayscale(28), TOKENIZE)
    with pytest.raises(TooManyBadSamples) as err:
        source.draw(20)
    assert str(err.value).startswith("11 of the 11 samples read so far were skipped")
    assert "shards-0001.tar (11)" in str(err.value) and "Traceback" not in str(err.value)
    source.close()
