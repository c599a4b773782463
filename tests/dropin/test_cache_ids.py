"""Reference caches keyed by string ids (WebDataset keys) and 128-bit uids (DataComp), and the
export of selected uids in DataComp's subset format."""

import hashlib
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from jestkit.core.policies import SelectionConfig
from jestkit.dropin import CachedReference, SelectiveLoader
from jestkit.dropin.cache import (
    MANIFEST,
    UID_DTYPE,
    CacheError,
    CacheMeta,
    ReferenceCache,
    build_cache,
    finalize,
    fingerprint_ids,
    format_uids,
    id_kind,
    load_datacomp_subset,
    parse_uids,
    save_datacomp_subset,
)

D = 4
ROWS = 16


def key_values(keys):
    """Per-key outputs from the key's text alone (sha256 of its UTF-8), independent of batching
    and of the cache: the independent answer every lookup is checked against."""
    rows = [np.frombuffer(hashlib.sha256(k.encode()).digest()[: 2 * D], np.uint16) for k in keys]
    image = torch.from_numpy(np.stack(rows).astype(np.float32) / 65535)
    return {"image": image, "loss": image.sum(1)}


def str_keys(n=70, seed=0):
    rng = random.Random(seed)
    keys = [f"shard-{rng.randrange(10**6):06d}/sample{i:05d}" for i in range(n)]
    return keys + ["ünïcödé/ключ/鍵", "", "a b", "a"]  # unicode, empty, spaces, a prefix


def hex_uids(n=70, seed=0):
    rng = random.Random(seed)
    uids = [f"{rng.getrandbits(128):032x}" for _ in range(n)]
    return uids + ["0" * 32, "f" * 32, "8000000000000000" + "0" * 16, "7" + "f" * 31]


def meta_for(ids, columns=None):
    return CacheMeta("m" * 64, fingerprint_ids(ids), columns or {"image": [D], "loss": []})


def build(path, ids, compute, **kw):
    meta = meta_for(ids)
    kw = {"batch_size": 5, "rows_per_part": ROWS, "progress": False} | kw
    build_cache(path, ids, compute, meta, **kw)
    return ReferenceCache.open(path, meta.model_fingerprint, meta.data_fingerprint)


# ----------------------------------------------------------------------------- round trips


def test_string_keyed_cache_round_trip(tmp_path):
    keys = str_keys()
    seen = []

    def compute(batch):
        assert isinstance(batch, list) and all(isinstance(k, str) for k in batch)
        seen.extend(batch)
        return key_values(batch)

    cache = build(tmp_path, keys, compute)
    assert seen == keys and cache.id_kind == "str" and len(cache) == len(keys)
    assert cache.ids() == keys
    q = [keys[i] for i in random.Random(1).choices(range(len(keys)), k=200)]  # with repeats
    got, want = cache.lookup(q), key_values(q)
    for c in want:
        assert torch.equal(got[c], want[c])
    assert torch.equal(cache.lookup(np.array(q))["loss"], want["loss"])  # numpy str array too
    assert cache.lookup(q[:3], columns=["loss"])["loss"].shape == (3,)
    # stored as an Arrow string column
    table = pq.read_table(tmp_path / "part-00000.parquet")
    assert table.schema.field("id").type == pa.string()
    assert table["id"].to_pylist() == keys[:ROWS]


def test_uid_keyed_cache_round_trip(tmp_path):
    hexes = hex_uids()
    uids = parse_uids(hexes)
    assert uids.dtype == np.dtype("u8,u8") and id_kind(uids) == "uid128"

    def compute(batch):
        assert isinstance(batch, np.ndarray) and batch.dtype == UID_DTYPE
        return key_values(format_uids(batch))

    cache = build(tmp_path, uids, compute)
    assert cache.id_kind == "uid128" and np.array_equal(cache.ids(), uids)
    assert format_uids(cache.ids()) == hexes
    pick = random.Random(2).choices(range(len(hexes)), k=100)
    want = key_values([hexes[i] for i in pick])
    by_array = cache.lookup(uids[pick])
    by_hex = cache.lookup([hexes[i].upper() if i % 2 else hexes[i] for i in pick])  # any case
    for c in want:
        assert torch.equal(by_array[c], want[c]) and torch.equal(by_hex[c], want[c])
    # stored as 16 bytes per uid, big-endian: the bytes are the uid's hex
    table = pq.read_table(tmp_path / "part-00001.parquet")
    assert table.schema.field("id").type == pa.binary(16)
    assert [b.hex() for b in table["id"].to_pylist()] == hexes[ROWS : 2 * ROWS]


def test_int64_cache_is_unchanged(tmp_path):
    """int64 ids: same fingerprint as before string ids existed, same int64 column, tensors."""
    ids = torch.tensor([5, -3, 2**40, 7])
    old = hashlib.sha256(b"jestkit-ids-v1\n4\n" + np.array([5, -3, 2**40, 7], "<i8").tobytes())
    assert fingerprint_ids(ids) == old.hexdigest() == fingerprint_ids([5, -3, 2**40, 7])
    cache = build(tmp_path, ids, lambda b: key_values([str(i) for i in b.tolist()]))
    assert cache.id_kind == "int64" and torch.equal(cache.ids(), ids)
    want = key_values([str(i) for i in ids.tolist()])["loss"].reshape(2, 2)
    assert torch.equal(cache.lookup(ids.reshape(2, 2))["loss"], want)  # any shape, as before
    assert pq.read_schema(tmp_path / "part-00000.parquet").field("id").type == pa.int64()


def test_fingerprints_over_kinds():
    keys = ["a", "b", "c"]
    assert (
        fingerprint_ids(keys) == fingerprint_ids(np.array(keys)) == fingerprint_ids(("a", "b", "c"))
    )
    hexes = hex_uids(3)
    distinct = {
        fingerprint_ids(keys),
        fingerprint_ids(keys[::-1]),  # order matters
        fingerprint_ids(["ab", "c"]),  # concatenation is not ambiguous
        fingerprint_ids(keys, "tok"),
        fingerprint_ids(["1", "2", "3"]),
        fingerprint_ids(torch.tensor([1, 2, 3])),  # kinds never collide
        fingerprint_ids(parse_uids(hexes)),
        fingerprint_ids(hexes),  # the same uids as plain strings are another id list
    }
    assert len(distinct) == 8
    assert fingerprint_ids(parse_uids(hexes)) == fingerprint_ids(
        parse_uids([h.upper() for h in hexes])
    )


def test_stale_string_cache_is_refused(tmp_path):
    keys = str_keys(20)
    build(tmp_path, keys, key_values)
    with pytest.raises(CacheError, match=r"data fingerprint.*other data"):
        ReferenceCache.open(tmp_path, data_fingerprint=fingerprint_ids(keys[:-1]))
    with pytest.raises(CacheError, match="another id list"):  # resuming over another id list
        build_cache(
            tmp_path, keys[::-1], key_values, meta_for(keys), rows_per_part=ROWS, progress=False
        )


def test_uid_cache_is_integrity_checked(tmp_path):
    uids = parse_uids(hex_uids(40))
    build(tmp_path, uids, lambda b: key_values(format_uids(b)))
    f = tmp_path / "part-00001.parquet"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match=r"part-00001\.parquet.*rebuild"):
        ReferenceCache.open(tmp_path)


# ----------------------------------------------------------------------------- bad ids


def test_bad_ids_are_refused(tmp_path):
    meta = meta_for(["x"])
    with pytest.raises(TypeError, match=r"mix kinds of id.*'int64': 1, 'str': 'a'"):
        build_cache(tmp_path / "mixed", ["a", 1, "b"], key_values, meta, progress=False)
    with pytest.raises(TypeError, match=r"mix kinds"):
        fingerprint_ids(["a", np.int64(3)])
    with pytest.raises(TypeError, match="float"):
        fingerprint_ids([1.5, 2.5])
    with pytest.raises(ValueError, match="int64 range"):
        fingerprint_ids([1, 2**64])
    with pytest.raises(ValueError, match=r"duplicated ids, e\.g\. \['k2'\]"):
        build_cache(tmp_path / "dup", ["k1", "k2", "k3", "k2"], key_values, meta, progress=False)
    dup = hex_uids(3) + hex_uids(3)[1:2]
    with pytest.raises(ValueError, match=rf"duplicated ids, e\.g\. \['{dup[1]}'\]"):
        build_cache(tmp_path / "dupu", parse_uids(dup), key_values, meta, progress=False)
    with pytest.raises(ValueError, match="NUL"):
        fingerprint_ids(["a\x00"])
    assert not (tmp_path / "dup").exists() or not list((tmp_path / "dup").iterdir())


@pytest.mark.parametrize(
    "bad", ["123", "g" * 32, "0" * 33, " " + "0" * 31, "0x" + "0" * 30, "0" * 31 + "\n"]
)
def test_malformed_hex_uids_are_refused(bad):
    with pytest.raises(ValueError, match=r"1 uid\(s\) are not 32 hex digits"):
        parse_uids(["0" * 32, bad])


def test_lookup_names_missing_ids_and_refuses_other_kinds(tmp_path):
    keys = str_keys(20)
    cache = build(tmp_path / "s", keys, key_values)
    with pytest.raises(KeyError, match=r"2 id\(s\) not in the reference cache.*'nope'.*'zz'"):
        cache.lookup([keys[0], "zz", "nope", "zz"])
    with pytest.raises(TypeError, match="keyed by str ids, got int64"):
        cache.lookup(torch.tensor([1, 2]))
    hexes = hex_uids(20)
    ucache = build(tmp_path / "u", parse_uids(hexes), lambda b: key_values(format_uids(b)))
    absent = "0123456789abcdef" * 2
    with pytest.raises(KeyError, match=rf"1 id\(s\).*{absent}"):
        ucache.lookup([hexes[0], absent])
    with pytest.raises(ValueError, match="not 32 hex digits"):
        ucache.lookup(["not-a-uid"])


# ----------------------------------------------------------------------------- DataComp export


def test_datacomp_subset_export_reads_back(tmp_path):
    hexes = hex_uids(50, seed=3)
    path = save_datacomp_subset(tmp_path / "subset.npy", hexes)
    # DataComp's own recipe (its README): u8,u8 pairs of the two 16-digit halves, sorted
    want = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in hexes], np.dtype("u8,u8"))
    want.sort()
    raw = np.load(path)
    assert raw.dtype == np.dtype("u8,u8") and raw.shape == (len(hexes),)
    assert np.array_equal(raw, want)
    back = load_datacomp_subset(path)
    assert np.array_equal(back, want) and format_uids(back) == sorted(hexes)
    # from a uid array too (e.g. the selected rows of a uid-keyed cache), same file
    save_datacomp_subset(tmp_path / "again.npy", parse_uids(hexes[::-1]))
    assert (tmp_path / "again.npy").read_bytes() == path.read_bytes()


def test_datacomp_subset_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="duplicated"):
        save_datacomp_subset(tmp_path / "d.npy", hex_uids(3) + hex_uids(1))
    with pytest.raises(ValueError, match="not 32 hex digits"):
        save_datacomp_subset(tmp_path / "h.npy", ["xyz"])
    with pytest.raises(ValueError, match=r"\.npy"):
        save_datacomp_subset(tmp_path / "s.txt", hex_uids(2))
    np.save(tmp_path / "ints.npy", np.arange(4))
    with pytest.raises(ValueError, match="not a DataComp subset: dtype int64"):
        load_datacomp_subset(tmp_path / "ints.npy")
    np.save(tmp_path / "unsorted.npy", parse_uids(sorted(hex_uids(5)))[::-1])
    with pytest.raises(ValueError, match="not sorted"):
        load_datacomp_subset(tmp_path / "unsorted.npy")
    assert not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------- drop-in


class Keyed(torch.utils.data.Dataset):
    def __init__(self, keys):
        self.keys = keys

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i)]), "key": self.keys[i]}


def test_cached_reference_with_string_ids_in_the_batch(tmp_path):
    keys = str_keys(60)
    cache = build(tmp_path, keys, key_values)
    batch = next(iter(DataLoader(Keyed(keys), batch_size=32, shuffle=True)))
    assert isinstance(batch["key"], list)  # how PyTorch collates strings
    ref = CachedReference(cache, ids="key")
    assert torch.equal(ref(batch), key_values(batch["key"])["loss"])

    # easy_reference at temperature 0 keeps the b keys of lowest cached loss (brute force)
    loader = list(DataLoader(Keyed(keys), batch_size=20, shuffle=True, drop_last=True))
    selected = SelectiveLoader(
        loader,
        reference=ref,
        config=SelectionConfig(
            loss="per_example",
            filter_ratio=0.75,
            policy="easy_reference",
            temperature=0.0,
            method="independent",
        ),
        seed=0,
    )
    steps = 0
    for sub, whole in zip(selected, loader, strict=True):
        losses = key_values(whole["key"])["loss"]
        easiest = {whole["key"][i] for i in torch.argsort(losses)[:5].tolist()}
        assert isinstance(sub["key"], list) and set(sub["key"]) == easiest
        steps += 1
    assert steps == 3
    # an id missing from the cache is named
    with pytest.raises(KeyError, match="could not look up.*'missing-key'"):
        ref({"x": torch.zeros(2, 1), "key": [keys[0], "missing-key"]})


def test_cached_reference_with_hex_uids_in_the_batch(tmp_path):
    hexes = hex_uids(30)
    cache = build(tmp_path, parse_uids(hexes), lambda b: key_values(format_uids(b)))
    batch = {"x": torch.zeros(4, 1), "uid": hexes[3:7]}
    assert torch.equal(CachedReference(cache, ids="uid")(batch), key_values(hexes[3:7])["loss"])
    assert (tmp_path / MANIFEST).exists()


def test_sharded_build_of_string_ids_equals_one_process(tmp_path):
    """Two ranks' parts of a str-keyed cache, finalized, give the single process's manifest
    (the same part sizes and sha256) and rows."""
    keys = str_keys(50)
    meta = meta_for(keys)
    kw = {"batch_size": 5, "rows_per_part": ROWS, "progress": False}
    build_cache(tmp_path / "one", keys, key_values, meta, **kw)
    for rank in (1, 0):
        build_cache(tmp_path / "two", keys, key_values, meta, rank=rank, world_size=2, **kw)
    assert not (tmp_path / "two" / MANIFEST).exists()
    finalize(tmp_path / "two", keys, meta)
    one, two = ((tmp_path / d / MANIFEST).read_text() for d in ("one", "two"))
    assert one == two and '"sha256"' in one
    cache = ReferenceCache.open(tmp_path / "two", meta.model_fingerprint, meta.data_fingerprint)
    assert cache.ids() == keys
    assert torch.equal(cache.lookup(keys)["image"], key_values(keys)["image"])
