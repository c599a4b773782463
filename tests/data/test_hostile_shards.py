"""Hostile shard lists and records (issue 28, round three): brace patterns that would name
billions of files, ids and captions of the wrong type, a NUL byte in an image path, a super-batch
larger than a stream's pass, and one id twice in one super-batch."""

from __future__ import annotations

import contextlib
import resource
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_files import add_sample, sample, write_shards

from jestkit.data.shards import ShardPool, ShardPoolConfig, expand_braces, list_shards
from jestkit.data.stream import ShardsConfig


def _png() -> bytes:
    import numpy as np

    return sample(0, np.random.default_rng(0))[0]


@pytest.mark.parametrize("pattern", ["shards-{0000..99999999}.tar",
                                     "{0..999}{0..999}{0..999}.tar",
                                     "shards-{0000..0001}{0..999999999}.tar"])  # fmt: skip
def test_unbounded_brace_patterns_stop_at_the_first_missing_file(tmp_path, pattern):
    write_shards(tmp_path, shards=2, per_shard=2)
    start = time.monotonic()
    with _memory_limit(1 << 30):  # 10^8 names would need far more: MemoryError, not the OOM killer
        _refused_quickly(tmp_path, pattern)
    assert time.monotonic() - start < 2, "the pattern was expanded whole"


@contextlib.contextmanager
def _memory_limit(extra: int):
    """This process's address space limited to what it uses now plus `extra` bytes."""
    used = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _refused_quickly(tmp_path, pattern):
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        list_shards(str(tmp_path / pattern))
    assert "names" in str(e.value)  # says how many files the pattern names
    with pytest.raises(ValueError, match="expands to"):  # the list form is bounded
        expand_braces(pattern)
    assert expand_braces("a-{00..02}{x,y}.tar")[:3] == ["a-00x.tar", "a-00y.tar", "a-01x.tar"]


def test_commas_inside_braces_and_in_file_names_are_kept(tmp_path):
    write_shards(tmp_path / "sh", shards=2, per_shard=2)
    pattern = str(tmp_path / "sh" / "shards-{0000,0001}.tar")
    config = ShardsConfig(pattern=f"{pattern}, {tmp_path}/sh/shards-0000.tar")
    assert config.shards() == [pattern, f"{tmp_path}/sh/shards-0000.tar"]
    assert len(list_shards(config.shards())) == 3


def _tar_with_uids(path, uids: list[str]) -> str:
    """One sample per raw JSON text of its uid (written as it is, not re-encoded)."""
    png = _png()
    with tarfile.open(path, "w") as tar:
        for i, uid in enumerate(uids):
            add_sample(tar, f"{i:04d}", {"png": png, "txt": b"a red square",
                                         "json": f'{{"uid": {uid}}}'.encode()})  # fmt: skip
    return str(path)


def test_uids_that_are_not_one_line_strings_are_bad_samples(tmp_path):
    bad = ["123", "[1, 2]", '{"a": 1}', '""', '"with\\nnewline"', "1e400", "true", '"  "']
    good = ['"0a1b"', "null"]  # null: no uid, the key is the id
    path = _tar_with_uids(tmp_path / "u.tar", bad + good)
    records = list(ShardPool(path).records(0))
    reasons = [r.bad for r in records]
    assert all(r is not None and "id" in r for r in reasons[: len(bad)]), reasons
    assert reasons[len(bad):] == [None, None]
    assert [r.id for r in records[len(bad):]] == ["0a1b", f"{len(bad) + 1:04d}"]


def _parquet(path, **columns) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_parquet_values_of_the_wrong_type_are_bad_samples(tmp_path):
    png = _png()
    n = 6
    path = _parquet(
        tmp_path / "t.parquet",
        image=[png] * n,
        caption=pa.array([b"fine", b"\xff\xfe bad", b"also fine", b"x", b"y", b"z"]),
        uid=pa.array(["a", "b", "c", "", "e\nf", "g"]),
    )
    records = list(ShardPool(path).records(0))
    assert [r.bad is None for r in records] == [True, False, True, False, False, True]
    assert records[0].caption == "fine" and isinstance(records[0].caption, str)
    listed = _parquet(tmp_path / "l.parquet", image=[png, png],
                      caption=pa.array([["a red square", "a red square"], ["x"]]),
                      uid=["a", "b"])  # fmt: skip
    assert all(r.bad is not None and "caption" in r.bad for r in ShardPool(listed).records(0))
    ints = _parquet(tmp_path / "i.parquet", image=[png, png], caption=["a", "b"], uid=[7, 8])
    assert [r.id for r in ShardPool(ints).records(0)] == ["7", "8"]  # an int id column is fine
    floats = _parquet(tmp_path / "f.parquet", image=[png], caption=["a"], uid=[1.5])
    assert "id" in next(ShardPool(floats).records(0)).bad


def test_a_nul_byte_in_an_image_path_is_one_bad_sample(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    path = _parquet(tmp_path / "t.parquet", image_path=["a\0b.png", "ok.png"],
                    caption=["a red square"] * 2, uid=["a", "b"])  # fmt: skip
    pool = ShardPool(path, buffer_size=0)
    records = list(pool.records(0))
    assert records[0].bad is not None and records[1].bad is None
    assert len(pool.take(1)) == 1 and dict(pool.skipped) == {records[0].bad: 1}


def test_a_super_batch_larger_than_a_pass_is_refused_before_decoding_copies(tmp_path):
    pattern = write_shards(tmp_path, shards=1, per_shard=10)
    pool = ShardPool(pattern, buffer_size=4)
    start = time.monotonic()
    with pytest.raises(ValueError, match="larger than the data"):
        pool.take(200_000)
    assert time.monotonic() - start < 5
    assert pool.good <= 10


@pytest.mark.parametrize("n", [3, 7, 9, 10])
def test_no_id_twice_in_one_take_across_epochs_and_resume_is_exact(tmp_path, n):
    pattern = write_shards(tmp_path, shards=1, per_shard=10)
    config = ShardPoolConfig(buffer_size=4, seed=3)
    pool = ShardPool(pattern, config)
    takes = []
    for step in range(12):
        if step == 5:  # resume from a fresh pool mid-way (deferred samples in the state)
            state = pool.state_dict()
            pool = ShardPool(pattern, config)
            pool.load_state_dict(state)
        ids = [s["id"] for s in pool.take(n)]
        assert len(set(ids)) == n, (step, ids)
        takes.append(ids)
    straight = ShardPool(pattern, config)
    assert takes == [[s["id"] for s in straight.take(n)] for _ in range(12)]
    # every id is drawn once per pass: over 12 takes, counts differ by at most one pass
    counts = {}
    for ids in takes:
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
    assert len(counts) == 10 and max(counts.values()) - min(counts.values()) <= 1


def test_empty_and_out_of_range_shard_settings_are_refused():
    for pattern in ("", "  ", ",", " , "):
        with pytest.raises(ValueError, match="pattern"):
            ShardsConfig(pattern=pattern)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            ShardsConfig(pattern="x.tar", seed=seed)
    ShardsConfig(pattern="x.tar", seed=2**64 - 1)


def test_messages_name_what_a_cli_user_can_change(tmp_path):
    png = _png()
    no_caption = _parquet(tmp_path / "t.parquet", image=[png], words=["a"], uid=["a"])
    with pytest.raises(KeyError) as e:
        list(ShardPool(no_caption).records(0))
    assert "rename" in str(e.value)
    pattern = write_shards(tmp_path / "sh", shards=1, per_shard=4)
    with pytest.raises(ValueError) as e:
        ShardPool([pattern, pattern]).take(6)
    assert "each shard once" in str(e.value) and "check_duplicates" not in str(e.value)


def test_a_tar_caption_stays_bad_when_not_utf8(tmp_path):
    png = _png()
    with tarfile.open(tmp_path / "c.tar", "w") as tar:
        add_sample(tar, "0000", {"png": png, "txt": b"\xff\xfe bad"})
    assert next(ShardPool(str(tmp_path / "c.tar")).records(0)).bad is not None



def _killed(image):
    """A transform whose worker is killed, as the out-of-memory killer does."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_is_a_one_line_stream_stopped(tmp_path):
    import multiprocessing

    from jestkit.data.parallel import ParallelSource, StreamStopped
    from jestkit.data.stream import HashedWords

    multiprocessing.set_start_method("fork", force=True)
    pattern = write_shards(tmp_path, shards=1, per_shard=4)
    source = ParallelSource(pattern, ShardPoolConfig(buffer_size=0), _killed, HashedWords(64, 8),
                            workers=1)  # fmt: skip
    with pytest.raises(StreamStopped) as e:
        source.draw(2)
    assert "killed" in str(e.value) and "out of memory" in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    source.close()
