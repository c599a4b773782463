"""ShardPool: tar and Parquet shards written here from Fashion-MNIST, checked against the same
data held in memory."""

import io
import json
import pickle
import random
import re
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from jestkit import SelectionConfig
from jestkit.data.shards import (
    DuplicateIdError,
    ShardPool,
    ShardPoolConfig,
    TooManyBadSamples,
    expand_braces,
    list_shards,
)
from jestkit.dropin import SelectiveLoader
from jestkit.fashion.fashion_mnist import CLASSES

N = 120
SIZES = (35, 25, 40, 20)  # unequal shards


def png(image: torch.Tensor) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image.numpy()).save(out, "PNG")
    return out.getvalue()


def write_tar(path, samples):
    """samples: (key, image bytes, caption, uid or None), written as img2dataset does."""
    with tarfile.open(path, "w") as tar:
        for key, image, caption, uid in samples:
            files = [("png", image), ("txt", caption.encode())]
            if uid is not None:
                files.append(("json", json.dumps({"uid": uid, "key": key}).encode()))
            for ext, data in files:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def memory(fashion_train):
    """The data in memory: images (N, 1, 28, 28) uint8, captions, 128-bit hex uids, PNGs."""
    images, labels = fashion_train
    rng = random.Random(0)
    uids = [f"{rng.getrandbits(128):032x}" for _ in range(N)]
    captions = [f"a photo of a {CLASSES[int(labels[i])]}, number {i}" for i in range(N)]
    return {
        "image": images[:N].unsqueeze(1).clone(),
        "caption": captions,
        "id": uids,
        "png": [png(images[i]) for i in range(N)],
    }


def bounds():
    starts = [sum(SIZES[:i]) for i in range(len(SIZES))]
    return list(zip(starts, [s + n for s, n in zip(starts, SIZES, strict=True)], strict=True))


def tar_samples(memory, lo, hi):
    return [(f"{i:09d}", memory["png"][i], memory["caption"][i], memory["id"][i])
            for i in range(lo, hi)]  # fmt: skip


@pytest.fixture(scope="module")
def tar_dir(tmp_path_factory, memory):
    folder = tmp_path_factory.mktemp("tar")
    for s, (lo, hi) in enumerate(bounds()):
        write_tar(folder / f"shard-{s:04d}.tar", tar_samples(memory, lo, hi))
    return folder


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory, memory):
    """Two layouts: image bytes (`data-*.parquet`) and image paths (`paths-*.parquet`)."""
    folder = tmp_path_factory.mktemp("parquet")
    (folder / "img").mkdir()
    for i in range(N):
        (folder / "img" / f"{i}.png").write_bytes(memory["png"][i])
    for s, (lo, hi) in enumerate([(0, 70), (70, N)]):
        rows = range(lo, hi)
        table = pa.table({
            "uid": [memory["id"][i] for i in rows],
            "caption": [memory["caption"][i] for i in rows],
            "image": pa.array([memory["png"][i] for i in rows], pa.binary()),
        })  # fmt: skip
        pq.write_table(table, folder / f"data-{s}.parquet", row_group_size=32)
        paths = pa.table({
            "uid": [memory["id"][i] for i in rows],
            "text": [memory["caption"][i] for i in rows],
            "image_path": [f"img/{i}.png" for i in rows],
        })  # fmt: skip
        pq.write_table(paths, folder / f"paths-{s}.parquet")
    return folder


def sources(tar_dir, parquet_dir):
    return {
        "tar": str(tar_dir / "shard-{0000..0003}.tar"),
        "parquet": str(parquet_dir / "data-*.parquet"),
        "parquet-paths": [parquet_dir / "paths-0.parquet", parquet_dir / "paths-1.parquet"],
    }


KINDS = ("tar", "parquet", "parquet-paths")


@pytest.mark.parametrize("kind", KINDS)
def test_pool_streams_the_data_held_in_memory(kind, tar_dir, parquet_dir, memory):
    pool = ShardPool(sources(tar_dir, parquet_dir)[kind], buffer_size=0, mode="L")
    samples = list(pool)
    assert [s["id"] for s in samples] == memory["id"]
    assert [s["caption"] for s in samples] == memory["caption"]
    assert all(s["image"].dtype == torch.uint8 for s in samples)
    assert torch.equal(torch.stack([s["image"] for s in samples]), memory["image"])
    assert pool.good == N and not pool.skipped and pool.epoch == 1


def test_transform_and_rgb_mode(tar_dir, memory):
    plain = next(iter(ShardPool(str(tar_dir / "shard-0000.tar"), buffer_size=0)))
    assert plain["image"].shape == (3, 28, 28)  # RGB by default, channels first
    assert all(torch.equal(plain["image"][c], memory["image"][0, 0]) for c in range(3))
    pool = ShardPool(str(tar_dir / "shard-0000.tar"), buffer_size=0,
                     transform=lambda im: torch.from_numpy(np.array(im.resize((14, 14)))))
    first = next(iter(pool))  # mode RGB by default: 3 values a pixel
    assert first["image"].shape == (14, 14, 3)
    grey = Image.fromarray(memory["image"][0, 0].numpy()).resize((14, 14))
    assert all(torch.equal(first["image"][..., c], torch.from_numpy(np.array(grey)))
               for c in range(3))  # fmt: skip


def test_buffer_shuffle_is_a_seeded_permutation_within_the_buffer(tar_dir, memory):
    def order(seed, epochs=1):
        pool = ShardPool(str(tar_dir / "*.tar"), buffer_size=16, seed=seed, mode="L")
        return [[s["id"] for s in pool] for _ in range(epochs)]

    position = {uid: i for i, uid in enumerate(memory["id"])}
    first, second = order(0, epochs=2)
    for ids in (first, second):
        assert sorted(ids) == sorted(memory["id"])  # every sample once per epoch
        # a buffer of 16 can only hold back, never bring forward more than 15 places
        assert all(position[uid] <= p + 15 for p, uid in enumerate(ids))
    assert first != memory["id"] and first != second  # shuffled, differently each epoch
    assert order(0) == [first] and order(1) != [first]


def collect(batches):
    return [(b["id"], b["image"].clone()) for b in batches]


def same_batches(a, b):
    assert [ids for ids, _ in a] == [ids for ids, _ in b]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))


def corrupt(folder, memory):
    """A copy of the tar shards with one undecodable PNG (garbage) and one truncated PNG."""
    bad = {10: b"this is not a png", 77: memory["png"][77][:200]}
    for s, (lo, hi) in enumerate(bounds()):
        samples = [(k, bad.get(int(k), im), c, u) for k, im, c, u in tar_samples(memory, lo, hi)]
        write_tar(folder / f"shard-{s:04d}.tar", samples)
    return bad


@pytest.mark.parametrize("kind", ["tar", "parquet", "bad-tar"])
@pytest.mark.parametrize("rank", [None, 1])
@pytest.mark.parametrize("stop_after", [3, 9])  # super-batches: in the first / second epoch
def test_resume_continues_with_the_same_samples(kind, rank, stop_after, tar_dir, parquet_dir,
                                                memory, tmp_path):  # fmt: skip
    if kind == "bad-tar":
        corrupt(tmp_path, memory)
        source = str(tmp_path / "*.tar")
    else:
        source = sources(tar_dir, parquet_dir)[kind]
    config = ShardPoolConfig(buffer_size=20, seed=3, mode="L", min_bad=5,
                             rank=rank, world_size=None if rank is None else 2)  # fmt: skip
    B, epochs = 8 if rank else 16, 2

    whole = ShardPool(source, config)
    expected = []
    for _ in range(epochs):
        expected += collect(whole.super_batches(B))
    assert len(expected) == epochs * 7

    first, got = ShardPool(source, config), []
    while len(got) < stop_after:  # one epoch after the other, killed after stop_after batches
        for batch in first.super_batches(B):
            got += collect([batch])
            if len(got) == stop_after:
                break
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    del first  # the killed run

    resumed = ShardPool(source, config)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    remaining_epochs = epochs - resumed.epoch
    for _ in range(remaining_epochs):
        got += collect(resumed.super_batches(B))
    same_batches(got, expected)
    assert resumed.skipped == whole.skipped and resumed.good == whole.good


def test_dataloader_and_threads_give_the_same_super_batches(tar_dir):
    source, B = str(tar_dir / "*.tar"), 16
    reference = collect(ShardPool(source, buffer_size=10, seed=1).super_batches(B))
    assert len(reference) == N // B
    loader = DataLoader(ShardPool(source, buffer_size=10, seed=1), batch_size=B, drop_last=True)
    same_batches(collect(loader), reference)
    threaded = ShardPool(source, buffer_size=10, seed=1, decode_threads=2)
    same_batches(collect(threaded.super_batches(B)), reference)

    # resume through a DataLoader: kill after 2 super-batches, continue in a fresh pool
    pool = ShardPool(source, buffer_size=10, seed=1)
    it = iter(DataLoader(pool, batch_size=B, drop_last=True))
    got = collect([next(it), next(it)])
    state = pool.state_dict()
    fresh = ShardPool(source, buffer_size=10, seed=1)
    fresh.load_state_dict(state)
    got += collect(DataLoader(fresh, batch_size=B, drop_last=True))
    same_batches(got, reference)


@pytest.mark.parametrize("kind", KINDS)
def test_selective_loader_selects_as_on_the_data_in_memory(kind, tar_dir, parquet_dir, memory):
    torch.manual_seed(0)
    learner, reference = torch.nn.Linear(784, 10), torch.nn.Linear(784, 10)
    targets = torch.randint(0, 10, (N,))
    target_of = dict(zip(memory["id"], targets.tolist(), strict=True))

    def scorer(model):
        def score(image, caption, id):
            y = torch.tensor([target_of[i] for i in id])
            return F.cross_entropy(model(image.flatten(1).float() / 255), y, reduction="none")

        return score

    config = SelectionConfig(loss="per_example", filter_ratio=0.75, policy="learnability",
                             n_chunks=3)  # fmt: skip
    B = 24
    in_memory = [{"image": memory["image"][i], "caption": memory["caption"][i],
                  "id": memory["id"][i]} for i in range(N)]  # fmt: skip
    expected = SelectiveLoader(DataLoader(in_memory, batch_size=B), scorer(learner),
                               scorer(reference), config, seed=5)  # fmt: skip
    pool = ShardPool(sources(tar_dir, parquet_dir)[kind], buffer_size=0, mode="L")
    streamed = SelectiveLoader(pool.super_batches(B), scorer(learner), scorer(reference), config,
                               seed=5)  # fmt: skip
    want = [(b["id"], b["image"]) for b in expected]
    got = [(b["id"], b["image"]) for b in streamed]
    assert len(got) == N // B and all(len(ids) == 6 for ids, _ in got)
    same_batches(got, want)


def test_truncated_tar_is_skipped_and_counted(tar_dir, memory, tmp_path):
    for path in tar_dir.glob("*.tar"):
        shutil.copy(path, tmp_path / path.name)
    victim = tmp_path / "shard-0001.tar"  # samples 35..59
    with tarfile.open(victim) as tar:
        members = tar.getmembers()
    cut = members[3 * 7].offset_data + 100  # inside the PNG of its 8th sample (index 42)
    victim.write_bytes(victim.read_bytes()[:cut])
    lost = set(range(42, 60))  # the sample being read (counted) and the unknowable rest

    kept = {memory["id"][i] for i in range(N) if i not in lost}
    pool = ShardPool(str(tmp_path / "*.tar"), buffer_size=8, mode="L")
    ids = [s["id"] for s in pool]
    assert sorted(ids) == sorted(kept) and pool.skipped == {"truncated shard": 1}
    batches = list(pool.super_batches(10))  # the second epoch, as super-batches
    assert len(batches) == len(kept) // 10 and all(len(b["id"]) == 10 for b in batches)
    assert {uid for b in batches for uid in b["id"]} <= kept
    assert pool.skipped == {"truncated shard": 2}  # counted again in the second epoch
    assert pool.skipped_by_shard == {str(victim): 2}

    # cut exactly at a member boundary: tarfile ends quietly; the missing end marker is caught
    victim.write_bytes(victim.read_bytes()[: members[3 * 7].offset])
    pool = ShardPool(str(victim), buffer_size=0, mode="L", min_bad=5)
    assert [s["id"] for s in pool] == memory["id"][35:41]
    assert pool.skipped == {"truncated shard": 1}


def test_corrupt_png_is_skipped_and_counted(memory, tmp_path):
    bad = corrupt(tmp_path, memory)
    pool = ShardPool(str(tmp_path / "shard-{0000..0003}.tar"), buffer_size=0, mode="L")
    batches = list(pool.super_batches(17))
    assert all(b["image"].shape == (17, 1, 28, 28) for b in batches)
    ids = [uid for b in batches for uid in b["id"]]
    assert ids == [memory["id"][i] for i in range(N) if i not in bad][: len(ids)]
    assert len(batches) == (N - 2) // 17
    assert pool.skipped == {"undecodable image": 2}
    assert sum(pool.skipped_by_shard.values()) == 2


def test_unreadable_parquet_row_group_is_skipped_row_by_row(parquet_dir, memory, tmp_path):
    path = tmp_path / "data-0.parquet"  # rows 0..69 in row groups of 32
    shutil.copy(parquet_dir / "data-0.parquet", path)
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)  # uid of rows 32..63
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(raw))
    (tmp_path / "cut.parquet").write_bytes((parquet_dir / "data-1.parquet").read_bytes()[:-100])

    pool = ShardPool([path, tmp_path / "cut.parquet"], buffer_size=0, mode="L", min_bad=40)
    assert [s["id"] for s in pool] == memory["id"][:32] + memory["id"][64:70]
    assert pool.skipped == {"unreadable row group": 32, "unreadable shard": 1}
    assert pool.skipped_by_shard == {str(path): 32, str(tmp_path / "cut.parquet"): 1}


def test_too_many_bad_samples_stop_the_run_naming_the_shard(memory, tmp_path):
    samples = tar_samples(memory, 0, 40)
    samples = [(k, b"garbage" if i % 4 == 0 else im, c, u)
               for i, (k, im, c, u) in enumerate(samples)]  # fmt: skip
    write_tar(tmp_path / "good.tar", tar_samples(memory, 40, 80))
    write_tar(tmp_path / "bad.tar", samples)
    pool = ShardPool([tmp_path / "good.tar", tmp_path / "bad.tar"], buffer_size=0, mode="L",
                     max_bad_fraction=0.05, min_bad=3)  # fmt: skip
    with pytest.raises(TooManyBadSamples, match=r"bad\.tar"):
        list(pool)
    # 4 bad ones (> min_bad = 3) among 40 + 13 read: 7.5 % > 5 %
    assert pool.skipped == {"undecodable image": 4} and pool.good == 40 + 9
    # a looser threshold lets the same pool through, skipping all 10
    pool = ShardPool([tmp_path / "good.tar", tmp_path / "bad.tar"], buffer_size=0, mode="L",
                     max_bad_fraction=0.2, min_bad=3)  # fmt: skip
    assert len(list(pool)) == 70 and pool.skipped == {"undecodable image": 10}


def test_patterns(tar_dir, tmp_path):
    assert expand_braces("a-{0000..0002}.tar") == ["a-0000.tar", "a-0001.tar", "a-0002.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    names = [str(tar_dir / f"shard-{i:04d}.tar") for i in range(4)]
    assert list_shards(str(tar_dir / "shard-{0000..0003}.tar")) == names
    assert list_shards(str(tar_dir / "shard-*.tar")) == names
    assert list_shards([tar_dir / "shard-0002.tar", str(tar_dir / "shard-000[01].tar")]) == \
        [names[2], names[0], names[1]]  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"no file matches .*nothing-\*\.tar"):
        ShardPool(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(FileNotFoundError, match=r"shard-0004\.tar"):
        ShardPool(str(tar_dir / "shard-{0000..0004}.tar"))
    with pytest.raises(IsADirectoryError, match=r"is a folder"):
        list_shards(str(tar_dir))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unknown shard format"):
        list_shards(str(tmp_path / "*.txt"))
    with pytest.raises(ValueError, match="empty list"):
        ShardPool([])


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_the_stream_exactly(world_size, memory, tmp_path):
    bad = corrupt(tmp_path, memory)
    pools = [ShardPool(str(tmp_path / "*.tar"), buffer_size=7, mode="L", rank=r,
                       world_size=world_size) for r in range(world_size)]  # fmt: skip
    seen = [[s["id"] for s in pool] for pool in pools]
    flat = [uid for ids in seen for uid in ids]
    assert len(flat) == len(set(flat))  # no sample on two ranks
    assert sorted(flat) == sorted(memory["id"][i] for i in range(N) if i not in bad)  # none lost
    assert sum(pool.n_skipped for pool in pools) == len(bad)
    sizes = [len(ids) + pool.n_skipped for ids, pool in zip(seen, pools, strict=True)]
    assert max(sizes) - min(sizes) <= 1  # record g goes to rank g % world_size


def test_duplicate_ids_are_an_error_naming_them(memory, tmp_path):
    write_tar(tmp_path / "a.tar", tar_samples(memory, 0, 10))
    write_tar(tmp_path / "b.tar", tar_samples(memory, 5, 6))
    pool = ShardPool(str(tmp_path / "*.tar"), buffer_size=0, rank=1, world_size=2)
    with pytest.raises(DuplicateIdError, match=rf"{memory['id'][5]}.*a\.tar.*b\.tar"):
        list(pool)  # rank 1 never owns the duplicate but sees it: every rank reads every record
    pool = ShardPool(str(tmp_path / "*.tar"), buffer_size=0, check_duplicates=False)
    assert len(list(pool)) == 11


def test_tar_without_json_uses_the_key_and_skips_incomplete_samples(memory, tmp_path):
    samples = [(k, im, c, None) for k, im, c, _ in tar_samples(memory, 0, 3)]
    write_tar(tmp_path / "a.tar", samples)
    with tarfile.open(tmp_path / "a.tar", "a") as tar:  # a sample without a caption
        info = tarfile.TarInfo("000000099.png")
        info.size = len(memory["png"][0])
        tar.addfile(info, io.BytesIO(memory["png"][0]))
    pool = ShardPool(str(tmp_path / "a.tar"), buffer_size=0, min_bad=5)
    assert [s["id"] for s in pool] == ["000000000", "000000001", "000000002"]
    assert pool.skipped == {"no caption": 1}


def test_bad_uses_are_clear_errors(tar_dir, parquet_dir):
    source = str(tar_dir / "*.tar")
    pool = ShardPool(source, buffer_size=4)
    with pytest.raises(RuntimeError, match="num_workers"):
        next(iter(DataLoader(pool, batch_size=4, num_workers=1)))
    next(iter(pool))  # a pool with an open shard reader still pickles (for spawned workers)
    copy = pickle.loads(pickle.dumps(pool))
    assert next(iter(copy))["id"] == next(iter(pool))["id"]  # it continues where pool was
    other = ShardPool(source, buffer_size=4, seed=9)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(pool.state_dict())
    with pytest.raises(KeyError, match="no caption column 'alt'"):
        list(ShardPool(str(parquet_dir / "data-0.parquet"), caption_column="alt"))
    with pytest.raises(ValueError, match="rank"):
        ShardPoolConfig(rank=2, world_size=2)


# -- issue 16, items 4-7: bounded samples, Parquet image paths, link members, empty captions ---


def _small_png(size=8) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 99, dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _tar_with(path, members):
    """members: (name, bytes) files, or (name, '->target') symlinks."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def _read(source, **config):
    pool = ShardPool(source, buffer_size=0, min_bad=1000, **config)
    return [s["id"] for s in pool], dict(pool.skipped)


def test_samples_past_the_bounds_are_bad_counted_and_skipped(tmp_path):
    good = _small_png()
    members = [
        ("a.png", good), ("a.txt", b"a good caption"),
        ("b.png", good), ("b.txt", b"x" * 5000),  # a caption over max_caption_chars
        ("c.png", good + b"\0" * 20_000), ("c.txt", b"a big file"),  # a member over max bytes
        ("d.png", _small_png(200)), ("d.txt", b"a bomb"),  # 40,000 pixels
        ("e.png", good), ("e.txt", b"another good one"),
    ]
    shard = _tar_with(tmp_path / "s.tar", members)
    ids, skipped = _read(shard, max_caption_chars=1000, max_sample_bytes=10_000,
                         max_image_pixels=10_000)  # fmt: skip
    assert ids == ["a", "e"]
    assert skipped == {"caption too long": 1, "sample too large": 1, "image too large": 1}


def test_a_huge_compressed_caption_is_never_read_whole(tmp_path):
    """A 100 MB caption in a .tar.gz of a few hundred KB: skipped from its header, not read."""
    import resource

    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in [("a.png", _small_png()), ("a.txt", b"fine")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("b.txt")
        info.size = 100 << 20

        class Zeros(io.RawIOBase):
            left = info.size

            def readable(self):
                return True

            def readinto(self, buffer):
                n = min(len(buffer), self.left)
                buffer[:n] = b"a" * n
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Zeros(), 1 << 20))
        tar.addfile(tarfile.TarInfo("b.png"), io.BytesIO(b""))
    assert path.stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ids, skipped = _read(str(path))
    assert ids == ["a"] and skipped == {"caption too long": 1}
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


def test_link_members_are_bad_samples(tmp_path):
    good = _small_png()
    (tmp_path / "secret.txt").write_text("not yours")
    shard = _tar_with(tmp_path / "s.tar", [
        ("a.png", good), ("a.txt", b"good"),
        ("b.png", good), ("b.txt", "->/etc/passwd"),
        ("c.png", "->../secret.png"), ("c.txt", b"linked image"),
        ("d.png", good), ("d.txt", b"good too"),
    ])  # fmt: skip
    ids, skipped = _read(shard)
    assert ids == ["a", "d"] and skipped == {"link member": 2}


def test_empty_captions_are_bad_samples(tmp_path):
    good = _small_png()
    shard = _tar_with(tmp_path / "s.tar", [
        ("a.png", good), ("a.txt", b"   \n\t "),
        ("b.png", good), ("b.txt", b""),
        ("c.png", good), ("c.txt", b"fine"),
    ])  # fmt: skip
    assert _read(shard) == (["c"], {"no caption": 2})
    table = pa.table({"image": [good, good, good], "caption": ["", " ", "ok"],
                      "uid": ["x", "y", "z"]})  # fmt: skip
    pq.write_table(table, tmp_path / "t.parquet")
    assert _read(str(tmp_path / "t.parquet")) == (["z"], {"no caption": 2})


def test_parquet_image_paths_are_regular_files_inside_the_table_folder(tmp_path):
    import os

    folder = tmp_path / "table"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "ok.png").write_bytes(_small_png())
    (folder / "img" / "big.png").write_bytes(_small_png() + b"\0" * 50_000)
    os.mkfifo(folder / "img" / "fifo.png")
    (tmp_path / "outside.png").write_bytes(_small_png())
    (folder / "img" / "link.png").symlink_to(tmp_path / "outside.png")
    paths = {"ok": "img/ok.png", "zero": "/dev/zero", "fifo": "img/fifo.png",
             "up": "../outside.png", "abs": str(tmp_path / "outside.png"),
             "link": "img/link.png", "big": "img/big.png", "dir": "img"}  # fmt: skip
    pq.write_table(pa.table({"image_path": list(paths.values()), "caption": ["c"] * len(paths),
                             "uid": list(paths)}), folder / "t.parquet")  # fmt: skip
    ids, skipped = _read(str(folder / "t.parquet"), max_sample_bytes=10_000)
    assert ids == ["ok"]
    assert skipped == {"image path outside the table's folder": 4,
                       "image path not a regular file": 2, "sample too large": 1}  # fmt: skip


# -- issue 28, round three: the pool's arguments ----------------------------------------------


def _six(tmp_path) -> str:
    members = []
    for i in range(6):
        members += [(f"{i:03d}.png", _small_png()), (f"{i:03d}.txt", f"caption {i}".encode())]
    return _tar_with(tmp_path / "six.tar", members)


def test_pool_arguments_of_the_wrong_kind_name_them(tmp_path):
    source = _six(tmp_path)
    for bad in (None, 123, [source, None], [b"six.tar"]):
        with pytest.raises(TypeError, match="source must be a path, a pattern or a list of them"):
            ShardPool(bad)
    with pytest.raises(TypeError, match="config must be a ShardPoolConfig.*got dict"):
        ShardPool(source, {"seed": 1})
    for seed, error in [(-1, ValueError), (2**64, ValueError), ("1", TypeError), (True, TypeError)]:
        with pytest.raises(error, match=re.escape("seed must be an int in [0, 2**64 - 1]")):
            ShardPool(source, seed=seed)
    assert len(list(ShardPool(source, seed=2**64 - 1))) == 6
    wrong = [("buffer_size", "10", TypeError), ("buffer_size", -1, ValueError),
             ("decode_threads", 1.5, TypeError), ("streams", 0, ValueError),
             ("world_size", True, TypeError), ("rank", "0", TypeError)]  # fmt: skip
    for name, value, error in wrong:
        others = {"rank": 0, "world_size": 1} if name in ("rank", "world_size") else {}
        with pytest.raises(error, match=f"{name} must be"):
            ShardPool(source, **{**others, name: value})


def test_an_unknown_image_mode_is_refused_not_a_bad_sample_each(tmp_path):
    # before: every sample was skipped as "undecodable image"
    source = _six(tmp_path)
    for mode in ("XYZ", "rgb", 3):
        with pytest.raises(ValueError, match=f"mode must be None or a Pillow mode.*got {mode!r}"):
            ShardPool(source, mode=mode)
    for mode in ("L", "RGBA", "I", None):
        assert len(list(ShardPool(source, mode=mode))) == 6


def test_super_batches_need_a_positive_int(tmp_path):
    pool = ShardPool(_six(tmp_path), buffer_size=0)
    for size, error in [(2.5, TypeError), (True, TypeError), ("2", TypeError), (0, ValueError)]:
        with pytest.raises(error, match="batch_size must be a positive int"):
            next(pool.super_batches(size))
    assert [len(b["id"]) for b in pool.super_batches(np.int64(3))] == [3, 3]


def test_a_malformed_state_is_refused_and_changes_nothing(tmp_path):
    pool = ShardPool(_six(tmp_path), buffer_size=4, seed=0)
    it = iter(pool)
    next(it)
    state = pool.state_dict()
    want = [s["id"] for s in it]
    bad = [
        (None, TypeError, "state must be the dict that ShardPool.state_dict\\(\\) returned"),
        ({k: v for k, v in state.items() if k != "buffer"}, ValueError, "no 'buffer' entry"),
        ({**state, "buffer": [(0, "k")]}, ValueError, "state\\['buffer'\\] holds a malformed"),
        ({**state, "buffer": [(9, "k", "k", "c", b"x", None, None)]}, ValueError,
         "state\\['buffer'\\] holds a malformed"),
        ({**state, "buffer": [(0, "k", "k", 5, b"x", None, None)]}, ValueError,
         "state\\['buffer'\\] holds a malformed"),
        ({**state, "buffer": None}, ValueError, "state\\['buffer'\\] holds a malformed"),
        ({**state, "position": ["a", 0, 0]}, ValueError, "state\\['position'\\]"),
        ({**state, "position": [0, 0]}, ValueError, "state\\['position'\\]"),
        ({**state, "epoch": -1}, ValueError, "state\\['epoch'\\]"),
        ({**state, "generator": torch.zeros(16, dtype=torch.uint8)}, ValueError,
         "state\\['generator'\\] is not a state"),
        ({**state, "skipped": [1]}, ValueError, "state\\['skipped'\\]"),
    ]  # fmt: skip
    fresh = ShardPool(_six(tmp_path), buffer_size=4, seed=0)
    first = [s["id"] for s in ShardPool(_six(tmp_path), buffer_size=4, seed=0)]
    for broken, error, match in bad:
        with pytest.raises(error, match=match):
            fresh.load_state_dict(broken)
    assert [s["id"] for s in fresh] == first  # the refused states changed nothing
    fresh.load_state_dict(state)
    assert [s["id"] for s in fresh] == want
