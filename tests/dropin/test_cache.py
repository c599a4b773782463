"""The reference cache: round trip, stale rejection, resume after a crash, sharded build."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jestkit.dropin.cache import (
    MANIFEST,
    CacheError,
    CacheMeta,
    ReferenceCache,
    build_cache,
    finalize,
    fingerprint_ids,
    fingerprint_state_dict,
)

D = 8
N = 300
ROWS = 64  # rows_per_part: 300 ids -> 5 parts (4 x 64 + 44)
BATCH = 20  # 4 batches per full part, 3 in the last one


def make_ids(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(10 * n, generator=g)[:n] * 3 + 11  # unsorted, not contiguous


def values(batch):
    """Deterministic per-id outputs, independent of how ids are batched."""
    x = batch.to(torch.float64)[:, None]
    k = torch.arange(D, dtype=torch.float64)
    return {"image": torch.sin(0.37 * x + k).float(), "text": torch.cos(0.11 * x - k).float()}


class Counting:
    """A compute function that records the ids it is asked for and can fail after n calls."""

    def __init__(self, fail_after=None, fn=values):
        self.calls, self.seen, self.fail_after, self.fn = 0, [], fail_after, fn

    def __call__(self, batch):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.seen.append(batch.clone())
        return self.fn(batch)


def make_meta(ids, model="m" * 64, columns=None):
    return CacheMeta(model, fingerprint_ids(ids), columns or {"image": [D], "text": [D]})


def build(path, ids, meta, compute=values, **kw):
    kw = {"batch_size": BATCH, "rows_per_part": ROWS, "progress": False} | kw
    build_cache(path, ids, compute, meta, **kw)


def parts(path):
    return sorted(p.name for p in path.iterdir() if p.name.startswith("part-"))


def assert_complete(path, ids, meta):
    cache = ReferenceCache.open(path, meta.model_fingerprint, meta.data_fingerprint)
    assert len(cache) == len(ids)
    assert torch.equal(cache.ids(), ids)  # every id exactly once, in build order
    got = cache.lookup(ids)
    want = values(ids)
    for c in ("image", "text"):
        assert torch.equal(got[c], want[c])
    return cache


# ----------------------------------------------------------------------------- round trip


def test_round_trip_random_lookup(tmp_path):
    ids = make_ids()
    meta = make_meta(ids)
    build(tmp_path, ids, meta, progress=True)  # the tqdm path too
    cache = ReferenceCache.open(tmp_path, meta.model_fingerprint, meta.data_fingerprint)
    assert cache.meta == meta and len(cache) == N
    assert parts(tmp_path) == [f"part-{k:05d}.parquet" for k in range(5)]

    g = torch.Generator().manual_seed(1)
    q = ids[torch.randint(0, N, (500,), generator=g)]  # random order, with repeats
    got = cache.lookup(q)
    want = values(q)
    assert set(got) == {"image", "text"}
    for c in got:
        assert got[c].dtype == torch.float32 and got[c].shape == (500, D)
        assert torch.equal(got[c], want[c])
    only = cache.lookup(q[:7].int(), columns=["text"])
    assert list(only) == ["text"] and torch.equal(only["text"], want["text"][:7])
    with pytest.raises(KeyError, match="unknown cache column"):
        cache.lookup(q, columns=["loss"])


def test_per_example_loss_column(tmp_path):
    ids = make_ids(50)
    meta = make_meta(ids, columns={"loss": []})
    build(tmp_path, ids, meta, compute=lambda b: {"loss": b.float() / 7}, rows_per_part=16)
    cache = ReferenceCache.open(tmp_path, data_fingerprint=meta.data_fingerprint)
    q = ids.flip(0)
    assert torch.equal(cache.lookup(q)["loss"], q.float() / 7)
    assert cache.lookup(q)["loss"].shape == (50,)


def test_lookup_missing_ids_raises_key_error_naming_them(tmp_path):
    ids = make_ids(40)
    build(tmp_path, ids, make_meta(ids))
    cache = ReferenceCache.open(tmp_path)
    absent = torch.tensor([ids[0].item(), -5, 10**9])
    with pytest.raises(KeyError, match=r"2 id\(s\).*-5, 1000000000"):
        cache.lookup(absent)


# ----------------------------------------------------------------------------- stale / invalid


def test_open_refuses_stale_fingerprints(tmp_path):
    ids = make_ids(40)
    meta = make_meta(ids)
    build(tmp_path, ids, meta)
    ReferenceCache.open(tmp_path, meta.model_fingerprint, meta.data_fingerprint)
    with pytest.raises(CacheError, match=r"model fingerprint.*jestkit reference"):
        ReferenceCache.open(tmp_path, model_fingerprint="x" * 64)
    with pytest.raises(CacheError, match=r"data fingerprint.*jestkit reference"):
        ReferenceCache.open(tmp_path, data_fingerprint=fingerprint_ids(ids, "other tokenizer"))


def test_build_refuses_folder_of_another_meta(tmp_path):
    ids = make_ids()
    meta = make_meta(ids)
    build(tmp_path / "done", ids, meta)
    with pytest.raises(CacheError, match="model fingerprint"):
        build(tmp_path / "done", ids, make_meta(ids, model="z" * 64))

    # an interrupted build (parts, no manifest) of another meta is refused too, and left alone
    with pytest.raises(RuntimeError):
        build(tmp_path / "half", ids, meta, compute=Counting(fail_after=5))
    before = parts(tmp_path / "half")
    other = CacheMeta(meta.model_fingerprint, fingerprint_ids(ids, "v2"), meta.columns)
    with pytest.raises(CacheError, match="data fingerprint"):
        build(tmp_path / "half", ids, other)
    with pytest.raises(CacheError, match="rows_per_part"):
        build(tmp_path / "half", ids, meta, rows_per_part=32)
    assert parts(tmp_path / "half") == before


def test_missing_manifest_is_refused(tmp_path):
    with pytest.raises(CacheError, match="no reference cache"):
        ReferenceCache.open(tmp_path / "nothing")
    ids = make_ids(40)
    build(tmp_path, ids, make_meta(ids))
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(CacheError, match="incomplete cache: build was interrupted; re-run"):
        ReferenceCache.open(tmp_path)


def test_bad_compute_output_is_rejected_and_leaves_no_part(tmp_path):
    ids = make_ids(40)
    meta = make_meta(ids)
    bad = {
        "shape": lambda b: {"image": torch.zeros(len(b), D + 1), "text": torch.zeros(len(b), D)},
        "column": lambda b: {"image": torch.zeros(len(b), D)},
        "nan": lambda b: values(b) | {"text": torch.full((len(b), D), float("nan"))},
    }
    for name, fn in bad.items():
        with pytest.raises(ValueError, match="compute"):
            build(tmp_path / name, ids, meta, compute=fn)
        assert parts(tmp_path / name) == []
    with pytest.raises(ValueError, match="duplicated"):
        build(tmp_path / "dup", torch.tensor([1, 2, 1]), meta)


# ----------------------------------------------------------------------------- resume


def test_interrupted_build_resumes_without_recomputing(tmp_path):
    ids = make_ids()
    meta = make_meta(ids)
    crash = Counting(fail_after=10)  # parts 0 and 1 (4 batches each) complete, part 2 half done
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(tmp_path, ids, meta, compute=crash)
    assert not (tmp_path / MANIFEST).exists()
    complete = [p for p in parts(tmp_path) if p.endswith(".parquet")]
    assert complete == ["part-00000.parquet", "part-00001.parquet"]
    for p in complete:  # complete parts are whole
        assert torch.equal(
            torch.from_numpy(pq.read_table(tmp_path / p)["id"].to_numpy()),
            ids[int(p[5:10]) * ROWS :][:ROWS],
        )
    with pytest.raises(CacheError, match="incomplete"):
        ReferenceCache.open(tmp_path)

    again = Counting()
    build(tmp_path, ids, meta, compute=again)
    assert again.calls == 4 + 4 + 3  # parts 2, 3, 4 only
    assert torch.equal(torch.cat(again.seen), ids[2 * ROWS :])
    assert parts(tmp_path) == [f"part-{k:05d}.parquet" for k in range(5)]  # no temp files left
    assert_complete(tmp_path, ids, meta)

    third = Counting()  # a complete cache is not recomputed
    build(tmp_path, ids, meta, compute=third)
    assert third.calls == 0
    assert_complete(tmp_path, ids, meta)


def test_crash_between_write_and_rename_leaves_only_an_ignored_temp_file(tmp_path, monkeypatch):
    ids = make_ids()
    meta = make_meta(ids)
    real_replace = os.replace
    renamed = []

    def crashing_replace(src, dst):
        if str(dst).endswith(".parquet") and len(renamed) == 1:
            raise OSError("simulated crash before rename")
        renamed.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="before rename"):
        build(tmp_path, ids, meta)
    monkeypatch.setattr(os, "replace", real_replace)

    assert parts(tmp_path) == ["part-00000.parquet", "part-00001.parquet.tmp"]
    pq.read_table(tmp_path / "part-00001.parquet.tmp")  # a whole file, but not yet a part
    with pytest.raises(CacheError, match="incomplete"):
        ReferenceCache.open(tmp_path)
    with pytest.raises(CacheError, match=r"missing 4 of 5 parts"):
        finalize(tmp_path, ids, meta)

    again = Counting()
    build(tmp_path, ids, meta, compute=again)
    assert torch.equal(torch.cat(again.seen), ids[ROWS:])  # part 1 recomputed, part 0 not
    assert parts(tmp_path) == [f"part-{k:05d}.parquet" for k in range(5)]
    assert_complete(tmp_path, ids, meta)


# ----------------------------------------------------------------------------- sharded


def test_sharded_build_equals_single_process_build(tmp_path):
    ids = make_ids()
    meta = make_meta(ids)
    build(tmp_path / "one", ids, meta)

    sharded = tmp_path / "two"
    r0 = Counting()
    build(sharded, ids, meta, compute=r0, rank=0, world_size=2)
    assert parts(sharded) == ["part-00000.parquet", "part-00002.parquet", "part-00004.parquet"]
    assert not (sharded / MANIFEST).exists()  # only finalize writes it
    with pytest.raises(CacheError, match=r"missing 2 of 5 parts \(part indices \[1, 3\]\)"):
        finalize(sharded, ids, meta)

    # rank 1 crashes in its second part, then resumes
    with pytest.raises(RuntimeError):
        build(sharded, ids, meta, compute=Counting(fail_after=6), rank=1, world_size=2)
    with pytest.raises(CacheError, match=r"part indices \[3\]"):
        finalize(sharded, ids, meta)
    r1 = Counting()
    build(sharded, ids, meta, compute=r1, rank=1, world_size=2)
    assert torch.equal(torch.cat(r1.seen), ids[3 * ROWS : 4 * ROWS])
    finalize(sharded, ids, meta)

    one, two = ReferenceCache.open(tmp_path / "one"), assert_complete(sharded, ids, meta)
    assert torch.equal(one.ids(), two.ids()) and one.meta == two.meta
    for c in ("image", "text"):
        assert torch.equal(one.lookup(ids)[c], two.lookup(ids)[c])
    assert (tmp_path / "one" / MANIFEST).read_text() == (sharded / MANIFEST).read_text()


def test_finalize_rejects_duplicated_or_missing_rows(tmp_path):
    ids = make_ids()
    meta = make_meta(ids)
    build(tmp_path, ids, meta)
    (tmp_path / MANIFEST).unlink()
    # tamper with part 1: same metadata, but its ids repeat part 0's
    f = tmp_path / "part-00001.parquet"
    table = pq.read_table(f)
    tampered = table.set_column(0, "id", pa.array(ids[:ROWS].numpy()))
    pq.write_table(tampered.replace_schema_metadata(table.schema.metadata), f)
    with pytest.raises(CacheError, match=r"64 missing.*64 duplicated"):
        finalize(tmp_path, ids, meta)
    assert not (tmp_path / MANIFEST).exists()
    with pytest.raises(CacheError, match="another id list"):
        finalize(tmp_path, ids.flip(0), meta)


# ----------------------------------------------------------------------------- fingerprints


def test_fingerprints():
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}
    fp = fingerprint_state_dict(sd)
    assert fp == fingerprint_state_dict(dict(reversed(list(sd.items()))))  # order of keys
    assert len(fp) == 64
    w = sd["w"].clone()
    w[1, 2] = 9.0
    changed = [
        sd | {"w": w},
        sd | {"w": sd["w"].reshape(3, 2)},
        sd | {"w": sd["w"].double()},
        sd | {"w2": sd["w"]},
    ]
    assert len({fp} | {fingerprint_state_dict(s) for s in changed}) == 5

    ids = torch.tensor([3, 1, 2])
    assert fingerprint_ids(ids) == fingerprint_ids(ids.int())
    others = [fingerprint_ids(ids.flip(0)), fingerprint_ids(ids, "tok"), fingerprint_ids(ids[:2])]
    assert len({fingerprint_ids(ids), *others}) == 4
    assert fingerprint_ids(ids, "a", "b") != fingerprint_ids(ids, "ab")


# ----------------------------------------------------------------------------- issue 28: API


def test_int_cache_lookups_of_other_kinds_name_the_kind(tmp_path):
    ids = make_ids(40)
    build(tmp_path, ids, make_meta(ids))
    cache = ReferenceCache.open(tmp_path)
    # before: "too many dimensions 'str'" and "Overflow when unpacking long"
    with pytest.raises(TypeError, match="the cache is keyed by int64 ids, got str ids"):
        cache.lookup(["1"])
    with pytest.raises(ValueError, match="ids hold integers outside the int64 range"):
        cache.lookup([2**70])
    with pytest.raises(ValueError, match="ids hold integers outside the int64 range"):
        cache.lookup([[int(ids[0])], [2**70]])
    with pytest.raises(ValueError, match="ids must be integers of one shape.*ragged"):
        cache.lookup([[int(ids[0])], [int(ids[1]), int(ids[2])]])
    for wrong in ([1.5], [True], np.array([1.5]), torch.tensor([1.5])):
        with pytest.raises(TypeError, match="ids"):
            cache.lookup(wrong)
    # what worked keeps working: lists, nested lists, numpy arrays, scalars, tensors of any shape
    a, b = int(ids[0]), int(ids[1])
    want = values(torch.tensor([a, b]))["text"]
    assert torch.equal(cache.lookup([a, b])["text"], want)
    assert torch.equal(cache.lookup([[a, b]])["text"], want[None])
    assert torch.equal(cache.lookup(np.array([a, b], dtype=np.uint32))["text"], want)
    assert torch.equal(cache.lookup(a)["text"], want[0])
    assert torch.equal(cache.lookup(torch.tensor([[a], [b]]))["text"], want[:, None])


def test_build_cache_arguments_name_what_is_wrong(tmp_path):
    ids = make_ids(40)
    meta = make_meta(ids)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious")
    with pytest.raises(FileExistsError, match=f"{a_file}.* is a file, not a cache folder"):
        build(a_file, ids, meta)
    assert a_file.read_text() == "precious"
    for name, value, error in [("batch_size", 2.5, TypeError), ("batch_size", 0, ValueError),
                               ("rows_per_part", True, TypeError), ("world_size", "2", TypeError),
                               ("rank", -1, ValueError)]:  # fmt: skip
        with pytest.raises(error, match=f"{name} must be"):
            build(tmp_path / "c", ids, meta, **{name: value})
    assert not (tmp_path / "c").exists()  # refused before the folder is made


def test_build_cache_callables_meta_and_lookup_columns_of_the_wrong_kind(tmp_path):
    ids = make_ids(40)
    meta = make_meta(ids)
    with pytest.raises(TypeError, match="compute must be a callable.*got int"):
        build(tmp_path / "a", ids, meta, compute=5)
    with pytest.raises(TypeError, match="meta must be a CacheMeta.*got dict"):
        build(tmp_path / "a", ids, {"model": "m"})
    assert not (tmp_path / "a").exists()
    build(tmp_path / "c", ids, meta)
    cache = ReferenceCache.open(tmp_path / "c")
    # before: "unknown cache column(s) ['t', 'e', 'x', 't']"
    with pytest.raises(TypeError, match=r"columns must be a list of column names.*\['text'\]"):
        cache.lookup(ids[:2], columns="text")
