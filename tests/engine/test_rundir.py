"""Run folders, round two (issue 16, items 1-3): a reference only ever replaces a reference,
refused or no-op commands leave every record as it was, and nothing is written through a
symlink. Through the CLI, on the training tests' small slice."""

import os

import pytest
from helpers import LIMIT, POOL

from jestkit.cli import main as cli_main
from jestkit.engine.checkpoint import write_bytes_atomic
from jestkit.engine.rundir import RunDirError, check_reference_dir, run_lock

DATA = ["--data.limit", str(LIMIT), "--data.curated_size", str(POOL.curated_size)]
SMALL = [*DATA, "--model.dim", "16", "--model.depth", "1", "--model.text_depth", "1",
         "--model.heads", "2", "--model.embed_dim", "16", "--quiet"]  # fmt: skip
REFERENCE = ["reference", *SMALL, "--reference.steps", "2", "--reference.batch_size", "16",
             "--reference.eval_every", "2"]  # fmt: skip
TRAIN = ["train", *SMALL, "--selection.policy", "uniform", "--training.steps", "2",
         "--training.batch_size", "16", "--training.eval_every", "2"]  # fmt: skip


def snapshot(folder):
    """Every file under `folder` (symlinks as their target) and its bytes."""
    return {
        str(p.relative_to(folder)): os.readlink(p) if p.is_symlink() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_symlink() or p.is_file()
    }


def refused(code, capsys, *says):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for s in says:
        assert s in err, err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished uniform train run (no reference needed)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli_main([*TRAIN, "--out", str(out)]) == 0
    return out


def copy_of(folder, tmp_path):
    out = tmp_path / folder.name
    out.mkdir()
    for name, content in snapshot(folder).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    return out


# -- item 1: the reference swap only ever replaces a reference --------------------------------


def test_reference_into_a_train_run_is_refused(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        refused(cli_main([*REFERENCE, "--out", str(out), *extra]), capsys, "not a reference")
        assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no OUT.partial left


def test_reference_into_a_folder_of_runs_is_refused(finished, tmp_path, capsys):
    runs = tmp_path / "runs"
    copy_of(finished, runs.mkdir() or runs)
    before = snapshot(runs)
    refused(cli_main([*REFERENCE, "--out", str(runs), "--overwrite"]), capsys,
            "not a reference")  # fmt: skip
    assert snapshot(runs) == before


def test_reference_swap_keeps_an_unrelated_old_folder(tmp_path, capsys):
    out = tmp_path / "ref"
    assert cli_main([*REFERENCE, "--out", str(out)]) == 0
    old = tmp_path / "ref.old"
    old.mkdir()
    (old / "mine.txt").write_text("keep me")
    assert cli_main([*REFERENCE, "--out", str(out), "--overwrite",
                     "--reference.seed", "5"]) == 0  # fmt: skip
    assert (old / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "ref.old"]


def test_a_reference_with_foreign_files_is_not_swapped_away(tmp_path):
    out = tmp_path / "ref"
    out.mkdir()
    (out / "reference.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="notes.txt"):
        check_reference_dir(out, overwrite=True)


def test_a_foreign_partial_folder_is_refused(tmp_path):
    partial = tmp_path / "ref.partial"
    partial.mkdir()
    (partial / "thesis.tex").write_text("mine")
    with pytest.raises(RunDirError, match="thesis.tex"):
        check_reference_dir(tmp_path / "ref")


# -- item 2: refused or no-op commands rewrite no record --------------------------------------


def test_refused_resume_leaves_config_yaml(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    (out / "result.json").unlink()  # a run killed after its last checkpoint
    before = snapshot(out)
    code = cli_main([*TRAIN, "--out", str(out), "--resume", "--training.lr", "0.5"])
    refused(code, capsys, "training.lr")
    assert snapshot(out) == before


def test_resume_of_a_finished_run_rewrites_nothing(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    assert cli_main([*TRAIN, "--out", str(out), "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert snapshot(out) == before


def test_train_into_a_reference_folder_is_refused(tmp_path, capsys):
    ref = tmp_path / "ref"
    assert cli_main([*REFERENCE, "--out", str(ref)]) == 0
    before = snapshot(ref)
    for extra in ([], ["--overwrite"]):
        refused(cli_main([*TRAIN, "--out", str(ref), *extra]), capsys, "reference")
        assert snapshot(ref) == before


# -- item 3: nothing is written through a symlink ---------------------------------------------


@pytest.mark.parametrize("name", [".jestkit.lock", "config.yaml", "checkpoint.pt", "result.json"])
def test_symlinks_in_the_run_folder_are_refused(tmp_path, capsys, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / name).symlink_to(victim)
    for extra in ([], ["--overwrite"]):
        refused(cli_main([*TRAIN, "--out", str(out), *extra]), capsys, "symlink")
    assert victim.read_text() == "precious"


def test_the_lock_never_follows_a_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".jestkit.lock").symlink_to(victim)
    with pytest.raises(RunDirError, match="symlink"), run_lock(out):
        pass
    assert victim.read_text() == "precious"


def test_atomic_writes_replace_a_symlink_not_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for link in (tmp_path / "out.json", tmp_path / "out.json.tmp"):
        link.symlink_to(victim)
    write_bytes_atomic(b"new", tmp_path / "out.json")
    assert victim.read_text() == "precious"
    assert not (tmp_path / "out.json").is_symlink()
    assert (tmp_path / "out.json").read_bytes() == b"new"
