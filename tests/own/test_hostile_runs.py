"""Runs on shards given hostile settings (issue 28, round three): every setting checked at
start-up, before a lock or config.yaml is written (seeds that overflow, empty values); a resume
with another reference; the same shards listed in another order or named with a comma; a
super-batch larger than the pool; a jestkit checkpoint as the reference in the loop; worker
failures and out of memory as one line. Through the CLI's main() in this process."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from shard_files import write_shards

from jestkit.cli import main as cli_main

MODEL = ["--model.dim", "16", "--model.depth", "1", "--model.text_depth", "1", "--model.heads",
         "2", "--model.embed_dim", "16"]  # fmt: skip
SMALL = ["--shards.vocab_size", "512", *MODEL, "--quiet"]


def train(pattern, out, *extra):
    return cli_main(["train", "--shards.pattern", pattern, *SMALL, "--training.batch_size", "8",
                     "--training.steps", "2", "--out", str(out), *extra])  # fmt: skip


def score(pattern, checkpoint, out, *extra):
    return cli_main(["score", "--shards.pattern", pattern, *SMALL, "--reference",
                     str(checkpoint), "--batch_size", "32", "--out", str(out), *extra])  # fmt: skip


JEST = ["--selection.policy", "learnability", "--selection.n_chunks", "2"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Two shards, two reference checkpoints (uniform runs of other seeds), a score of each."""
    root = tmp_path_factory.mktemp("hostile")
    pattern = write_shards(root / "pool", shards=2, per_shard=48)
    for seed in (0, 1):
        assert train(pattern, root / f"ref{seed}", "--selection.policy", "uniform",
                     "--training.seed", str(seed)) == 0  # fmt: skip
        assert score(pattern, root / f"ref{seed}" / "checkpoint.pt", root / f"score{seed}") == 0
    return root, pattern


def refused(rc, capsys, *words):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    return err


def test_settings_are_checked_before_anything_is_written(scored, tmp_path, capsys):
    root, pattern = scored
    out = tmp_path / "run"
    cases = [
        (["--training.seed", str(2**64 - 1)], "--training.seed"),
        (["--training.seed", str(2**64 - 2)], "--training.seed"),  # seed + 2 overflows
        (["--shards.seed", "-1"], "--shards.seed"),
        (["--shards.seed", str(2**64)], "--shards.seed"),
    ]
    for extra, flag in cases:
        refused(train(pattern, out, "--selection.policy", "uniform", *extra), capsys, flag)
        assert not out.exists(), extra  # no lock, no config.yaml
    refused(train("", out), capsys, "--shards.pattern")  # not Fashion-MNIST
    refused(train(" , ", out), capsys, "--shards.pattern")
    assert not out.exists()
    refused(train(pattern, ""), capsys, "--out")
    refused(train(pattern, out, "--reference", ""), capsys, "--reference")
    refused(train(pattern, out, "--open_clip", " "), capsys, "--open_clip")
    refused(score(pattern, "", out), capsys, "--reference")
    refused(cli_main(["eval", "--checkpoint", "", "--eval.zeroshot", "x"]), capsys, "--checkpoint")
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_a_resume_with_another_reference_is_refused(scored, tmp_path, capsys):
    root, pattern = scored
    out = tmp_path / "run"
    args = [*JEST, "--training.steps", "4", "--training.checkpoint_every", "2"]
    assert train(pattern, out, *args, "--reference", str(root / "score0")) == 0
    (out / "result.json").unlink()  # as if killed after its last checkpoint
    before = (out / "config.yaml").read_text()
    for other in (root / "score1", root / "ref1" / "checkpoint.pt"):
        rc = train(pattern, out, *args, "--reference", str(other), "--resume")
        refused(rc, capsys, "reference")
        assert (out / "config.yaml").read_text() == before
    assert train(pattern, out, *args, "--reference", str(root / "score0"), "--resume") == 0


def test_a_jestkit_checkpoint_is_a_reference_in_the_loop(scored, tmp_path, capsys):
    root, pattern = scored
    out = tmp_path / "run"
    assert train(pattern, out, *JEST, "--reference", str(root / "ref0" / "checkpoint.pt")) == 0
    assert json.loads((out / "result.json").read_text())["flops"]["reference_score"] > 0
    other = ["--model.dim", "32", "--model.embed_dim", "32"]  # not the learner's architecture
    rc = train(pattern, tmp_path / "x", *JEST, *other, "--reference",
               str(root / "ref0" / "checkpoint.pt"))  # fmt: skip
    refused(rc, capsys, "--model")


def test_the_same_shards_in_another_order_or_with_a_comma_in_a_name(scored, tmp_path, capsys):
    root, pattern = scored
    first, second = (pattern.replace("{0000..0001}", n) for n in ("0000", "0001"))
    assert train(f"{second},{first}", tmp_path / "a", *JEST,
                 "--reference", str(root / "score0")) == 0  # fmt: skip
    braces = pattern.replace("{0000..0001}", "{0001,0000}")
    assert train(braces, tmp_path / "b", *JEST, "--reference", str(root / "score0")) == 0
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(first, odd / "a,b.tar")
    shutil.copy(second, odd / "c.tar")
    assert score(str(odd / "*.tar"), root / "ref0" / "checkpoint.pt", tmp_path / "s") == 0
    assert train(str(odd / "*.tar"), tmp_path / "c", *JEST, "--reference",
                 str(tmp_path / "s")) == 0  # fmt: skip


def test_a_super_batch_larger_than_the_pool_is_refused(scored, tmp_path, capsys):
    ten = write_shards(tmp_path / "ten", shards=1, per_shard=10)
    start = time.monotonic()
    rc = train(ten, tmp_path / "a", "--selection.policy", "uniform", "--training.batch_size",
               "200000", "--training.steps", "1")  # fmt: skip
    refused(rc, capsys, "larger than the data")
    assert time.monotonic() - start < 30
    assert not (tmp_path / "a" / "config.yaml").exists()  # refused at the first draw, before it
    root = scored[0]
    assert score(ten, root / "ref0" / "checkpoint.pt", tmp_path / "s") == 0
    rc = train(ten, tmp_path / "b", *JEST, "--reference", str(tmp_path / "s"),
               "--training.steps", "1")  # B = 40 of 10 samples  # fmt: skip
    refused(rc, capsys, "larger than the data")


def test_a_worker_failure_is_one_line(scored, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i in range(2):  # two shards for two workers, neither with a caption column
        pq.write_table(pa.table({"image": [b"x"], "words": ["a"], "uid": [str(i)]}),
                       tmp_path / f"{i}.parquet")  # fmt: skip
    rc = train(str(tmp_path / "*.parquet"), tmp_path / "run", "--selection.policy", "uniform",
               "--shards.workers", "2")  # fmt: skip
    refused(rc, capsys, "no caption column", "rename")


def test_out_of_memory_is_one_line(scored, tmp_path, capsys):
    from data.test_hostile_shards import _memory_limit

    root, pattern = scored
    with _memory_limit(2 << 30):  # the model's 51 GB fail at once, whatever the machine has
        rc = train(pattern, tmp_path / "run", "--selection.policy", "uniform", "--model.dim",
                   "65536")  # fmt: skip
    refused(rc, capsys, "not enough memory")


def _ranks(ctx, cases, ports, folders):
    """Each case's command line on this rank (in its folder: relative shard paths), its exit
    status and stderr; a fresh process group per case (the CLI leaves the group at its end)."""
    import contextlib
    import io
    import os

    out = []
    for i, case in enumerate(cases):
        if i:
            os.environ["MASTER_PORT"] = str(ports[i])
        os.chdir(folders[ctx.rank])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli_main(case[ctx.rank])
        out.append((rc, err.getvalue()))
    return out


def test_ranks_started_with_other_settings_all_stop_naming_the_setting(scored, tmp_path):
    from dropin.test_distributed import _free_port, spawn, values_of

    root, _ = scored
    folders = [tmp_path / "r0", tmp_path / "r1"]
    for folder, first in zip(folders, (0, 1000), strict=True):  # rank 1: other contents
        write_shards(folder / "pool", shards=2, per_shard=48, first=first)
        write_shards(folder / "other", shards=2, per_shard=48)
    base = ["train", *SMALL, *JEST, "--training.batch_size", "8", "--training.steps", "2",
            "--reference", str(root / "score0")]  # fmt: skip
    pool, other = "pool/shards-{0000..0001}.tar", "other/shards-{0000..0001}.tar"
    differ = {  # flag -> rank 1's extra arguments
        "--training.seed": ["--training.seed", "1"],
        "--shards.pattern": ["--shards.pattern", other],
        "--training.steps": ["--training.steps", "4"],
        "--selection.filter_ratio": ["--selection.filter_ratio", "0.75"],
    }
    cases = []
    for i, extra in enumerate(differ.values()):
        argv = [*base, "--shards.pattern", pool, "--out", str(tmp_path / f"run{i}")]
        cases.append((argv, [*argv, *extra]))
    mismatched = [*base, "--shards.pattern", pool, "--out", str(tmp_path / "cache")]
    cases.append((mismatched, mismatched))  # rank 1's files do not match the cache
    ports = [_free_port() for _ in cases]
    r0, r1 = values_of(spawn(_ranks, 2, tmp_path, cases, ports, folders, deadline_s=240))
    for i, flag in enumerate(differ):
        for rc, err in (r0[i], r1[i]):
            assert rc == 2 and flag in err and "other settings" in err, (flag, err[-2000:])
            assert "Traceback" not in err and len(err) < 1000, err[-2000:]
    for rc, err in (r0[-1], r1[-1]):
        assert rc == 2 and ("other shards" in err or "the shards' files" in err), err[-2000:]
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    assert not any((tmp_path / f"run{i}" / "checkpoint.pt").exists() for i in range(4))


def test_an_eval_set_claiming_a_billion_shards_is_refused_at_once(tmp_path):
    from data.test_hostile_shards import _memory_limit
    from shard_files import write_eval_set

    from jestkit.own.evalsets import EvalSetError, load_eval_set

    folder = write_eval_set(tmp_path / "shapes", "zeroshot", per_shard=4)
    (tmp_path / "shapes" / "test" / "nshards.txt").write_text("1000000000\n")
    start = time.monotonic()
    with _memory_limit(1 << 30), pytest.raises(EvalSetError, match="1.tar"):
        load_eval_set(folder, "zeroshot")
    assert time.monotonic() - start < 5
