"""Fault injection: `jestkit reference` and `jestkit train` killed with SIGKILL at random
points and run again, damaged checkpoints and caches, a full disk. Every case ends in the
uninterrupted run's exact result or in a clear refusal (exit status 2, a message, no
traceback), and nothing already written is lost.

The runs are real CLI subprocesses on the training tests' small slice (helpers.POOL, MODEL,
TINY-sized), one torch thread each so that results compare bit for bit."""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import LIMIT, MODEL, POOL

from jestkit.engine.checkpoint import load_checkpoint

DATA = ["--data.limit", str(LIMIT), "--data.curated_size", str(POOL.curated_size)]
MODEL_FLAGS = [f"--model.{k}={v}" for k, v in vars(MODEL).items()]
REFERENCE = [*DATA, *MODEL_FLAGS, "--reference.steps", "40", "--reference.batch_size", "64",
             "--quiet"]  # fmt: skip
TRAIN = [*DATA, *MODEL_FLAGS, "--training.batch_size", "16", "--selection.n_chunks", "4",
         "--training.steps", "12", "--training.eval_every", "4", "--training.checkpoint_every",
         "1", "--quiet"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def jestkit(*args, preexec_fn=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jestkit.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        preexec_fn=preexec_fn,
        timeout=timeout,
    )


def killed(args, ready, delay: float) -> bool:
    """Start `jestkit args`, wait until `ready()` (or the end), then `delay` seconds more, and
    SIGKILL it. True if it was killed, False if it had finished."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "jestkit.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    deadline = time.monotonic() + 600
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive


def refused(result: subprocess.CompletedProcess, *words: str) -> None:
    """A clear refusal: exit status 2, a one-line message with `words`, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr
    for w in words:
        assert w in result.stderr, (w, result.stderr)


def model_state(path):
    return load_checkpoint(path)["model"] if path.name == "checkpoint.pt" else torch.load(
        path, weights_only=True
    )["model"]


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted reference, and how long it took."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    start = time.monotonic()
    result = jestkit("reference", *REFERENCE, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, time.monotonic() - start


@pytest.fixture(scope="module")
def straight(reference, tmp_path_factory):
    """The uninterrupted learner run."""
    out = tmp_path_factory.mktemp("faults") / "straight"
    result = jestkit("train", *TRAIN, "--reference", str(reference[0]), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_killed_anywhere_resumes_to_the_same_reference(reference, tmp_path, seed):
    ref, seconds = reference
    out = tmp_path / "reference"
    delay = random.Random(seed).uniform(0.0, seconds)  # training, caching or writing
    was_killed = killed(["reference", *REFERENCE, "--out", str(out)], lambda: False, delay)
    if was_killed:  # never a half reference in OUT: none, or the whole one
        assert not out.exists() or (out / "reference.json").exists()
    again = jestkit("reference", *REFERENCE, "--out", str(out))
    if (out / "reference.json").exists() and again.returncode == 2:  # it had finished
        refused(again, "--overwrite")
    else:
        assert again.returncode == 0, again.stderr[-3000:]
    want = json.loads((ref / "reference.json").read_text())
    got = json.loads((out / "reference.json").read_text())
    assert got["model_fingerprint"] == want["model_fingerprint"]
    assert got["final"] == want["final"]
    assert same_state(model_state(out / "model.pt"), model_state(ref / "model.pt"))
    assert (out / "cache" / "manifest.json").read_text() == (
        ref / "cache" / "manifest.json"
    ).read_text()  # the same parts, byte for byte (their sha256 are in the manifest)
    assert not (tmp_path / "reference.partial").exists()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_killed_at_a_random_step_resumes_exactly(reference, straight, tmp_path, seed):
    out = tmp_path / "run"
    args = ["train", *TRAIN, "--reference", str(reference[0]), "--out", str(out)]
    delay = random.Random(seed).uniform(0.0, 3.0)
    killed(args, lambda: (out / "checkpoint.pt").exists(), delay)
    assert (out / "checkpoint.pt").exists()
    refused(jestkit(*args), "--resume", "--overwrite")  # never started afresh
    resumed = jestkit(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = json.loads((straight / "result.json").read_text())
    got = json.loads((out / "result.json").read_text())
    for key in ("steps", "history", "final", "flops", "selected_noise_fraction"):
        assert got[key] == want[key], key
    assert same_state(model_state(out / "checkpoint.pt"), model_state(straight / "checkpoint.pt"))


def test_damaged_checkpoints_are_refused_and_kept(reference, straight, tmp_path):
    args = ["train", *TRAIN, "--reference", str(reference[0]), "--resume"]
    good = (straight / "checkpoint.pt").read_bytes()
    damages = {
        "empty": b"",
        "truncated": good[: len(good) // 3],
        "not a checkpoint": b"just some text\n" * 10,
        "tail cut": good[:-100],
        "a byte flipped": good[: len(good) // 2] + bytes([good[len(good) // 2] ^ 1])
        + good[len(good) // 2 + 1 :],
    }
    for name, content in damages.items():
        out = tmp_path / name.replace(" ", "_")
        out.mkdir()
        (out / "checkpoint.pt").write_bytes(content)
        refused(jestkit(*args, "--out", str(out)), "checkpoint.pt")
        assert (out / "checkpoint.pt").read_bytes() == content  # left for the user to look at


def test_resume_with_changed_settings_names_the_setting(reference, straight, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((straight / "checkpoint.pt").read_bytes())
    base = ["train", *TRAIN, "--reference", str(reference[0]), "--out", str(out)]
    base += ["--resume"]
    refused(jestkit(*base, "--training.steps", "30"), "training.steps")
    refused(jestkit(*base, "--data.seed", "3"), "other data")


def test_damaged_cache_stops_training_before_any_step(reference, tmp_path):
    ref = tmp_path / "reference"
    ref.mkdir()
    for p in reference[0].rglob("*"):
        target = ref / p.relative_to(reference[0])
        if p.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(p.read_bytes())
    part = next((ref / "cache").glob("part-*.parquet"))
    raw = bytearray(part.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    part.write_bytes(bytes(raw))
    out = tmp_path / "run"
    refused(jestkit("train", *TRAIN, "--reference", str(ref), "--out", str(out)), "damaged")
    assert not (out / "checkpoint.pt").exists()
    (ref / "cache" / "manifest.json").write_text("{not json")
    refused(jestkit("train", *TRAIN, "--reference", str(ref), "--out", str(out)), "manifest")


def _full_disk(limit: int):
    """A file-size limit: writes past `limit` bytes fail with EFBIG, as on a full disk."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_is_a_message_and_loses_nothing(reference, straight, tmp_path):
    out = tmp_path / "run"
    args = ["train", *TRAIN, "--reference", str(reference[0]), "--out", str(out)]
    killed(args, lambda: (out / "checkpoint.pt").exists(), 0.0)  # a checkpoint part-way
    before = (out / "checkpoint.pt").read_bytes()
    assert load_checkpoint(out / "checkpoint.pt")["step"] < 12
    # the next checkpoint cannot be written: the run stops with a message, the last one is kept
    result = jestkit(*args, "--resume", preexec_fn=_full_disk(len(before) // 2))
    refused(result)
    assert "File too large" in result.stderr or "No space" in result.stderr, result.stderr
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not (out / "checkpoint.pt.tmp").exists()  # the half-written one is not left behind
    rerun = jestkit(*args, "--resume")  # room again: the same run as if nothing happened
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    want = json.loads((straight / "result.json").read_text())
    got = json.loads((out / "result.json").read_text())
    assert got["history"] == want["history"] and got["final"] == want["final"]


# -- issue 16, items 4-5: shards that would exhaust memory or hang, under a memory limit -------

MEMORY_LIMIT = 5 << 30  # address space: a jestkit run needs ~3.5 GiB of it (torch's libraries)
SHARD_FLAGS = ["--selection.policy", "uniform", "--training.steps", "2", "--training.batch_size",
               "16", *MODEL_FLAGS, "--shards.vocab_size", "512", "--shards.buffer_size", "0",
               "--shards.shuffle_shards", "false", "--quiet"]  # the bad shard is read first


def _memory_limit():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _sparse_tar_member(path, size: int) -> None:
    """A tar of one good sample and a `size`-byte caption that is a hole in a sparse file (no
    disk used), then a good sample again."""
    import io
    import tarfile

    from shard_files import sample

    png, _ = sample(0, __import__("numpy").random.default_rng(0))
    with open(path, "wb") as f:
        with tarfile.open(fileobj=f, mode="w") as tar:
            for name, data in (("a.png", png), ("a.txt", b"a red square")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            header = tarfile.TarInfo("b.txt")
            header.size = size
            f.write(header.tobuf())
        f.seek(size + (-size) % 512, os.SEEK_CUR)  # the member's bytes: a hole
        with tarfile.open(fileobj=f, mode="w") as tar:
            for name, data in (("c.png", png), ("c.txt", b"a red square")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _parquet_paths(folder, image_path: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    if image_path == "fifo.png":
        os.mkfifo(folder / image_path)
    pq.write_table(pa.table({"image_path": [image_path], "caption": ["a red square"],
                             "uid": ["x"]}), folder / "t.parquet")  # fmt: skip
    return str(folder / "t.parquet")


@pytest.mark.parametrize("kind", ["3 GiB caption", "/dev/zero", "fifo"])
def test_shards_that_would_exhaust_memory_or_hang(tmp_path, kind):
    from shard_files import write_shards

    pool = write_shards(tmp_path / "pool", shards=1, per_shard=64)
    if kind == "3 GiB caption":
        bad = tmp_path / "bomb.tar"
        _sparse_tar_member(bad, 3 << 30)
        bad, reason = str(bad), "caption too long"
    elif kind == "/dev/zero":
        bad, reason = _parquet_paths(tmp_path / "t", "/dev/zero"), "outside the table"
    else:
        bad, reason = _parquet_paths(tmp_path / "t", "fifo.png"), "not a regular file"
    out = tmp_path / "run"
    result = jestkit("train", "--shards.pattern", f"{bad},{pool}", *SHARD_FLAGS, "--out",
                     str(out), preexec_fn=_memory_limit, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = json.loads((out / "result.json").read_text())["skipped"]
    assert sum(skipped.values()) == 1 and reason in next(iter(skipped)), skipped


# -- issue 28: cache parts that would hang or exhaust memory -----------------------------------


@pytest.mark.parametrize("plant", ["fifo", "/dev/zero"])
def test_cache_parts_that_would_hang_or_exhaust_memory(reference, tmp_path, plant):
    """A reference's cache part replaced by a FIFO (before: `jestkit train` hung forever) or a
    symlink to /dev/zero (before: read until MemoryError), under the memory limit and a 60 s
    timeout: refused before the first step, naming the part."""
    ref = tmp_path / "reference"
    for p in reference[0].rglob("*"):
        if p.is_file():
            (ref / p.relative_to(reference[0])).parent.mkdir(parents=True, exist_ok=True)
            (ref / p.relative_to(reference[0])).write_bytes(p.read_bytes())
    part = ref / "cache" / "part-00000.parquet"
    part.unlink()
    os.mkfifo(part) if plant == "fifo" else part.symlink_to(plant)
    result = jestkit("train", *TRAIN, "--reference", str(ref), "--out", str(tmp_path / "run"),
                     preexec_fn=_memory_limit, timeout=60)  # fmt: skip
    refused(result, "part-00000.parquet is", "a FIFO" if plant == "fifo" else "a symlink")
