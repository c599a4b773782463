"""`jestkit score` never rewrites another run's records, checks its flags before the scoring pass,
and its cache sees the shards' contents, not only their names and sizes (issue 16, items 2, 10,
11). Through the CLI on shards the test writes; the reference is a short uniform run on them."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from shard_files import write_shards

from jestkit.cli import main as cli_main
from jestkit.dropin.cache import load_datacomp_subset
from jestkit.engine.config import FILTER_KEEP
from jestkit.own.score import export_subset

MODEL = ["--model.dim", "16", "--model.depth", "1", "--model.text_depth", "1", "--model.heads",
         "2", "--model.embed_dim", "16"]  # fmt: skip


def shards(folder, first=0):
    return write_shards(folder, shards=1, per_shard=96, first=first)


def train(pattern, out, *extra):
    return cli_main(["train", "--shards.pattern", pattern, "--shards.vocab_size", "512", *MODEL,
                     "--training.batch_size", "16", "--training.steps", "2", "--quiet",
                     "--out", str(out), *extra])  # fmt: skip


def score(pattern, checkpoint, out, *extra):
    return cli_main(["score", "--shards.pattern", pattern, "--shards.vocab_size", "512", *MODEL,
                     "--reference", str(checkpoint), "--batch_size", "32", "--quiet",
                     "--out", str(out), *extra])  # fmt: skip


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Shards, two reference checkpoints (uniform runs of other seeds) and a score folder."""
    root = tmp_path_factory.mktemp("scored")
    pattern = shards(root / "shards")
    for seed in (0, 1):
        assert train(pattern, root / f"ref{seed}", "--selection.policy", "uniform",
                     "--training.seed", str(seed)) == 0  # fmt: skip
    assert score(pattern, root / "ref0" / "checkpoint.pt", root / "score") == 0
    return root, pattern


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def copy_of(folder, to):
    for name, content in snapshot(folder).items():
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        (to / name).write_bytes(content)
    return to


def test_a_refused_score_rewrites_no_record(scored, tmp_path, capsys):
    root, pattern = scored
    out = copy_of(root / "score", tmp_path / "score")
    before = snapshot(out)
    # another reference, then other shards: both refused, config.yaml and all as they were
    assert score(pattern, root / "ref1" / "checkpoint.pt", out) == 2
    assert "another meta" in capsys.readouterr().err
    assert snapshot(out) == before
    other = shards(tmp_path / "other", first=1000)
    assert score(other, root / "ref0" / "checkpoint.pt", out) == 2
    assert snapshot(out) == before


def test_score_into_another_commands_folder_is_refused(scored, tmp_path, capsys):
    root, pattern = scored
    run = copy_of(root / "ref0", tmp_path / "run")  # a train run: checkpoint.pt, result.json
    before = snapshot(run)
    assert score(pattern, root / "ref0" / "checkpoint.pt", run) == 2
    assert "not a" in capsys.readouterr().err
    assert snapshot(run) == before


def test_keep_is_checked_before_the_scoring_pass(scored, tmp_path, capsys):
    root, pattern = scored
    out = tmp_path / "score"
    code = score(pattern, root / "ref0" / "checkpoint.pt", out, "--keep", "1.5", "--subset",
                 str(tmp_path / "s.npy"))  # fmt: skip
    assert code == 2 and "--keep" in capsys.readouterr().err
    assert not out.exists()  # refused before any work


def test_subset_keeps_the_filter_s_default_share_without_keep(scored, tmp_path, capsys):
    """--subset alone keeps FILTER_KEEP (30 %): the same uids as export_subset at 0.3; --keep
    without --subset is refused before any work."""
    root, pattern = scored
    out = copy_of(root / "score", tmp_path / "score")  # the cache is complete: no new pass
    assert score(pattern, root / "ref0" / "checkpoint.pt", out, "--subset",
                 str(tmp_path / "default.npy")) == 0  # fmt: skip
    assert "kept 29 of 96 uids" in capsys.readouterr().out  # round(0.3 * 96)
    export_subset(out, FILTER_KEEP, tmp_path / "explicit.npy")
    default = load_datacomp_subset(tmp_path / "default.npy")
    assert np.array_equal(default, load_datacomp_subset(tmp_path / "explicit.npy"))
    code = score(pattern, root / "ref0" / "checkpoint.pt", tmp_path / "new", "--keep", "0.5")
    assert code == 2 and "--keep needs --subset" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def recaption(tar_path):
    """The same shard, every caption's letters reversed: same name, same size, other text."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    size = os.path.getsize(tar_path)
    with tarfile.open(tar_path, "w") as tar:
        for m, data in members:
            if m.name.endswith(".txt"):
                data = data[::-1]
            tar.addfile(m, io.BytesIO(data))
    assert os.path.getsize(tar_path) == size


def test_a_recaptioned_shard_is_not_trained_against_the_stale_cache(scored, tmp_path, capsys):
    root, _ = scored
    folder = tmp_path / "shards"
    pattern = shards(folder)
    out = tmp_path / "score"
    assert score(pattern, root / "ref0" / "checkpoint.pt", out) == 0
    recaption(folder / "shards-0000.tar")
    code = train(pattern, tmp_path / "jest", "--reference", str(out), "--selection.policy",
                 "easy_reference")  # fmt: skip
    assert code == 2 and "other shards" in capsys.readouterr().err
    before = snapshot(out)
    assert score(pattern, root / "ref0" / "checkpoint.pt", out) == 2  # not mixed with stale parts
    assert snapshot(out) == before


# -- issue 28, round three: the cache's symlinks, other records, the reference.json read back --


def test_a_rerun_never_writes_through_a_symlink_in_the_cache(scored, tmp_path, capsys):
    """A symlink planted at cache/manifest.json.tmp (or a copied folder holding one), then the
    same score again (finalize runs on a complete cache too): notes.txt, outside OUT, keeps its
    content (before: it held the manifest, and cache/manifest.json was a link to it)."""
    root, pattern = scored
    out = copy_of(root / "score", tmp_path / "score")
    notes = tmp_path / "notes.txt"
    notes.write_text("precious notes")
    (out / "cache" / "manifest.json.tmp").symlink_to("../../notes.txt")
    assert score(pattern, root / "ref0" / "checkpoint.pt", out) == 0
    assert notes.read_text() == "precious notes"
    assert not any(p.is_symlink() for p in out.rglob("*"))


def test_score_refuses_a_config_yaml_it_did_not_write(scored, tmp_path, capsys):
    """A folder whose only file is your config.yaml, or a score folder whose config.yaml is a
    train run's: refused, unchanged (before: replaced, rc 0)."""
    root, pattern = scored
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.yaml").write_text("my: settings\n")
    assert score(pattern, root / "ref0" / "checkpoint.pt", proj) == 2
    assert "not one jestkit wrote" in capsys.readouterr().err
    assert (proj / "config.yaml").read_text() == "my: settings\n"
    out = copy_of(root / "score", tmp_path / "score")
    (out / "config.yaml").write_bytes((root / "ref0" / "config.yaml").read_bytes())
    before = snapshot(out)
    assert score(pattern, root / "ref0" / "checkpoint.pt", out) == 2
    assert "`jestkit train`'s config.yaml" in capsys.readouterr().err
    assert snapshot(out) == before


@pytest.mark.parametrize("subset, says", [
    ("s.txt", "must end in .npy"),
    ("file/s.npy", "is not a folder"),
    ("score/cache/s.npy", "inside"),
    ("ref/checkpoint.pt", "jestkit record"),
])  # fmt: skip
def test_subset_is_checked_before_the_scoring_pass(scored, tmp_path, capsys, subset, says):
    """--subset's name and folder (before: checked after the whole pass)."""
    root, pattern = scored
    (tmp_path / "file").write_text("a file")
    copy_of(root / "score", tmp_path / "score")
    out = tmp_path / "new"
    code = score(pattern, root / "ref0" / "checkpoint.pt", out, "--subset",
                 str(tmp_path / subset))  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and says in err, err
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize("damage, says", [
    ("[1, 2, 3]", "holds a JSON list, not a reference's reference.json"),
    ("truncated", "reference.json is not valid JSON"),
    ("no logit_scale", "reference.json has no 'logit_scale'"),
    ("logit_scale ten", "'logit_scale' is \"ten\", it must be a number"),
    ("fifo", "reference.json is a FIFO"),
])  # fmt: skip
def test_a_damaged_reference_json_names_the_file_and_field(scored, tmp_path, capsys, damage,
                                                          says):  # fmt: skip
    """reference.json a list (before: TypeError traceback), truncated, without logit_scale,
    logit_scale "ten" (before: raw "could not convert string to float"), a FIFO: one line
    naming the file, the field and how to fix it."""
    root, pattern = scored
    ref = copy_of(root / "score", tmp_path / "score")
    info = json.loads((ref / "reference.json").read_text())
    (ref / "reference.json").unlink()
    if damage == "fifo":
        os.mkfifo(ref / "reference.json")
    else:
        if damage == "no logit_scale":
            del info["logit_scale"]
        elif damage == "logit_scale ten":
            info["logit_scale"] = "ten"
        text = {"[1, 2, 3]": "[1, 2, 3]", "truncated": json.dumps(info)[:50]}.get(
            damage, json.dumps(info))
        (ref / "reference.json").write_text(text)
    code = train(pattern, tmp_path / "run", "--reference", str(ref))
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err, err
