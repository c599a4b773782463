"""A damaged reference cache is refused with a CacheError naming the part, never read as wrong rows.

Each case damages a complete cache the way a disk, a copy or a person might: bytes flipped inside
a Parquet data page (found from the column chunk offsets in the Parquet metadata), a truncated
part, a corrupt manifest, parts swapped, renamed or taken from another build. The resumable
build still reuses complete parts and overwrites temp files a killed build left behind.
"""

import hashlib
import json

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
)

D = 8
N = 200
ROWS = 64  # 4 parts: 3 x 64 + 8


def values(batch, scale=1.0):
    x = batch.double()[:, None]
    return {"image": (scale * torch.sin(0.37 * x + torch.arange(D))).float()}


IDS = torch.randperm(5 * N, generator=torch.Generator().manual_seed(0))[:N] * 3 + 1
META = CacheMeta("m" * 64, fingerprint_ids(IDS), {"image": [D]})


def build(path, compute=values):
    build_cache(path, IDS, compute, META, batch_size=16, rows_per_part=ROWS, progress=False)
    return path


def check_intact(path):
    cache = ReferenceCache.open(path, META.model_fingerprint, META.data_fingerprint)
    assert torch.equal(cache.ids(), IDS)
    assert torch.equal(cache.lookup(IDS)["image"], values(IDS)["image"])


def data_page_span(f, column="image"):
    """[first, end) bytes of the first data page of `column` in row group 0: from its
    data_page_offset to the end of the column chunk (the page header comes first)."""
    rg = pq.ParquetFile(f).metadata.row_group(0)
    (chunk,) = [
        rg.column(j)
        for j in range(rg.num_columns)
        if rg.column(j).path_in_schema.startswith(column)
    ]
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    return chunk.data_page_offset, start + chunk.total_compressed_size


def flip_in_data_page(f):
    """Flip the bits of 4 bytes half-way through a data page; return the original bytes."""
    raw = f.read_bytes()
    first, end = data_page_span(f)
    assert end - first > 128, (first, end)  # past the page header
    at = (first + end) // 2
    bad = bytearray(raw)
    for i in range(at, at + 4):
        bad[i] ^= 0xFF
    f.write_bytes(bytes(bad))
    return raw


def landed_in_the_data(f, original):
    """An independent check that the flip changed what the page decodes to (or broke it)."""
    try:
        damaged = pq.read_table(f)["image"]
    except Exception:
        return True
    return not damaged.equals(pq.read_table(pa.BufferReader(original))["image"])


@pytest.fixture
def cache(tmp_path):
    path = build(tmp_path / "cache")
    check_intact(path)
    return path


def test_bytes_flipped_in_a_data_page_are_refused(cache):
    f = cache / "part-00001.parquet"
    original = flip_in_data_page(f)
    assert landed_in_the_data(f, original)
    with pytest.raises(CacheError, match=r"part-00001\.parquet.*rebuild"):
        ReferenceCache.open(cache)


def test_page_checksums_catch_damage_the_manifest_did_not_see(cache):
    """Damage done before the manifest was written (its sha256 then matches the damaged file):
    the Parquet page checksums still refuse it."""
    f = cache / "part-00002.parquet"
    original = flip_in_data_page(f)
    assert landed_in_the_data(f, original)
    manifest = json.loads((cache / MANIFEST).read_text())
    raw = f.read_bytes()
    manifest["parts"][2] |= {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    (cache / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"part-00002\.parquet is damaged.*(?i:checksum|crc)"):
        ReferenceCache.open(cache)


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.0])
def test_truncated_part_is_refused(cache, keep):
    f = cache / "part-00000.parquet"
    raw = f.read_bytes()
    f.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(CacheError, match=r"part-00000\.parquet.*rebuild"):
        ReferenceCache.open(cache)


def _reorder_parts(m):
    m["parts"][0], m["parts"][1] = m["parts"][1], m["parts"][0]
    return json.dumps(m)


@pytest.mark.parametrize(
    "damage",
    [
        lambda text, m: text[: len(text) // 2],  # truncated
        lambda text, m: "",
        lambda text, m: "null",
        lambda text, m: json.dumps({k: v for k, v in m.items() if k != "parts"}),
        lambda text, m: _reorder_parts(m),  # parts listed in the wrong order
        lambda text, m: json.dumps(m | {"meta": m["meta"] | {"format_version": 1}}),
    ],
    ids=["truncated", "empty", "null", "no-parts", "parts-reordered", "older-format"],
)
def test_corrupt_manifest_is_refused(cache, damage):
    text = (cache / MANIFEST).read_text()
    (cache / MANIFEST).write_text(damage(text, json.loads(text)))
    with pytest.raises(CacheError, match=rf"{MANIFEST}|part-0000|format version 1"):
        ReferenceCache.open(cache)


def test_deleted_part_is_refused(cache):
    (cache / "part-00003.parquet").unlink()
    with pytest.raises(CacheError, match=r"part-00003\.parquet.*rebuild"):
        ReferenceCache.open(cache)


def test_parts_swapped_by_renaming_are_refused(cache):
    a, b = cache / "part-00000.parquet", cache / "part-00001.parquet"
    tmp = cache / "swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    with pytest.raises(CacheError, match=r"part-00000\.parquet.*rebuild"):
        ReferenceCache.open(cache)


def test_part_of_another_build_with_the_same_meta_is_refused(cache, tmp_path):
    """Another build under the same fingerprints (e.g. a nondeterministic reference): its part
    is a valid part of that build, with the same ids, but its rows are not this cache's."""
    other = build(tmp_path / "other", compute=lambda b: values(b, scale=2.0))
    (cache / "part-00001.parquet").write_bytes((other / "part-00001.parquet").read_bytes())
    with pytest.raises(CacheError, match=r"part-00001\.parquet.*(sha256|bytes).*rebuild"):
        ReferenceCache.open(cache)


def test_resume_overwrites_junk_temp_files_and_reuses_complete_parts(cache):
    """A build killed mid-part leaves a half-written temp file (here: junk) and no manifest;
    the next build recomputes only that part, and the result reads back intact."""
    (cache / MANIFEST).unlink()
    (cache / "part-00002.parquet").rename(cache / "part-00002.parquet.tmp")
    junk = cache / "part-00002.parquet.tmp"
    junk.write_bytes(junk.read_bytes()[:100])
    seen = []

    def counting(batch):
        seen.append(batch)
        return values(batch)

    build(cache, compute=counting)
    assert torch.equal(torch.cat(seen), IDS[2 * ROWS : 3 * ROWS])
    assert not list(cache.glob("*.tmp"))
    check_intact(cache)


def test_a_renamed_part_stops_the_resumed_build(cache):
    (cache / MANIFEST).unlink()
    (cache / "part-00003.parquet").unlink()
    (cache / "part-00001.parquet").rename(cache / "part-00003.parquet")
    with pytest.raises(CacheError, match=r"part-00003\.parquet holds part 1.*renamed"):
        build(cache)
    with pytest.raises(CacheError, match=r"part-00003\.parquet holds part 1.*renamed"):
        finalize(cache, IDS, META)


def test_a_damaged_complete_part_stops_the_resumed_build(cache):
    """A part damaged between the build and its finalize is found by finalize (page checksums),
    named, and recomputed once deleted."""
    (cache / MANIFEST).unlink()
    f = cache / "part-00001.parquet"
    flip_in_data_page(f)
    with pytest.raises(CacheError, match=r"part-00001\.parquet is damaged.*delete"):
        build(cache)
    assert not (cache / MANIFEST).exists()
    f.unlink()
    build(cache)
    check_intact(cache)


# -- issue 28, round three: symlinks, FIFOs and devices inside the cache folder ---------------


@pytest.mark.parametrize("name", [MANIFEST + ".tmp", "part-00001.parquet.tmp"])
def test_the_cache_never_writes_through_a_symlink(cache, tmp_path, name):
    """A rebuild or a rerun on a complete cache (finalize runs every time) with a symlink planted
    at a temporary file's name: the link is replaced, its target outside the folder untouched
    (before: the manifest was written into the target through the link)."""
    victim = tmp_path / "notes.txt"
    victim.write_text("precious notes")
    (cache / "part-00001.parquet").unlink()  # part 1 is rebuilt, the manifest rewritten
    (cache / name).symlink_to(victim)
    build(cache)
    assert victim.read_text() == "precious notes"
    assert not any(p.is_symlink() for p in cache.iterdir())
    check_intact(cache)


@pytest.mark.parametrize("plant", ["fifo", "/dev/zero", "symlink to a good copy"])
def test_cache_parts_that_are_not_regular_files_are_refused_unread(cache, tmp_path, plant):
    """A part replaced by a FIFO (before: the read hung forever), a symlink to /dev/zero (before:
    read until memory ran out) or a symlink to the part's own bytes: refused, naming the part,
    when the cache is opened and when a build resumes."""
    import os

    part = cache / "part-00000.parquet"
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(part.read_bytes())
    part.unlink()
    if plant == "fifo":
        os.mkfifo(part)
    else:
        part.symlink_to(plant if plant.startswith("/") else copy)
    says = "a FIFO" if plant == "fifo" else "a symlink"
    with pytest.raises(CacheError, match=f"part-00000.parquet is {says}"):
        ReferenceCache.open(cache, META.model_fingerprint, META.data_fingerprint)
    with pytest.raises(CacheError, match=f"part-00000.parquet is {says}"):
        build(cache)


def test_a_part_is_never_read_past_the_manifest_s_size(cache):
    """A part that grew (bytes appended) is refused from its size, before it is read."""
    part = cache / "part-00002.parquet"
    with open(part, "ab") as f:
        f.write(b"\0" * 4096)
    with pytest.raises(CacheError, match="part-00002.parquet has .* bytes, .* were written"):
        ReferenceCache.open(cache, META.model_fingerprint, META.data_fingerprint)
