"""Run folders, round two (issue 16, items 1-3): a reference only ever replaces a reference,
refused or no-op commands leave every record as it was, and nothing is written through a
symlink. Through the CLI, on the training tests' small slice."""

import os

import pytest
from helpers import LIMIT, POOL

from jestkit.cli import main as cli_main
from jestkit.engine.files import write_bytes_atomic
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


# -- issue 28, round three: records jestkit did not write, other commands' folders ------------

DEMO = ["demo", *SMALL, "--reference.steps", "2", "--reference.batch_size", "16",
        "--training.steps", "2", "--training.batch_size", "16", "--uniform_budgets", "[1]",
        "--policies", "[learnability-joint]", "--filter_keep", "null"]  # fmt: skip


@pytest.mark.parametrize("command", ["train", "reference", "demo"])
def test_a_config_yaml_jestkit_did_not_write_is_refused(tmp_path, capsys, command):
    """A folder whose only file is your config.yaml (before: train replaced it, rc 0)."""
    out = tmp_path / "proj"
    out.mkdir()
    (out / "config.yaml").write_text("my: settings\n")
    if command == "reference":  # a reference it would replace whole with --overwrite
        (out / "reference.json").write_text("{}")
    before = snapshot(out)
    args = {"train": TRAIN, "reference": [*REFERENCE, "--overwrite"], "demo": DEMO}[command]
    refused(cli_main([*args, "--out", str(out)]), capsys, "config.yaml", "not one jestkit wrote")
    assert snapshot(out) == before


def test_another_command_s_config_yaml_is_refused(finished, tmp_path, capsys):
    """A train run's folder without its checkpoint and result (killed before its first one):
    the demo and the reference refuse it, naming whose config.yaml it is."""
    out = copy_of(finished, tmp_path)
    for name in ("checkpoint.pt", "result.json", "curves.png"):
        (out / name).unlink(missing_ok=True)
    before = snapshot(out)
    refused(cli_main([*DEMO, "--out", str(out)]), capsys, "`jestkit train`'s config.yaml")
    assert snapshot(out) == before


def test_a_config_yaml_without_the_header_is_still_recognised(finished, tmp_path, capsys):
    """A run of an older jestkit (no `# jestkit train:` first line): recognised by its settings,
    and resumed as before."""
    out = copy_of(finished, tmp_path)
    text = (out / "config.yaml").read_text()
    assert text.startswith("# jestkit train: ")
    (out / "config.yaml").write_text(text.split("\n", 1)[1])
    assert cli_main([*TRAIN, "--out", str(out), "--resume"]) == 0


def test_the_demo_never_writes_over_a_train_run(finished, tmp_path, capsys):
    """`jestkit demo --out RUN` (a finished train run), with and without --overwrite: refused,
    every file unchanged (before: its config.yaml, results.json and curves.png written over the
    run's record)."""
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        refused(cli_main([*DEMO, "--out", str(out), *extra]), capsys)
        assert snapshot(out) == before


def test_the_demo_refuses_a_folder_of_other_files(tmp_path):
    from jestkit.engine.rundir import check_demo_dir

    (tmp_path / "checkpoint.pt").write_bytes(b"mine")
    with pytest.raises(RunDirError, match="not a demo's folder"):
        check_demo_dir(tmp_path)


def test_train_into_a_demo_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "runs").mkdir(parents=True)
    (out / "results.json").write_text("{}")
    refused(cli_main([*TRAIN, "--out", str(out)]), capsys, "a demo's folder")


def test_the_demo_refuses_empty_policies(tmp_path, capsys):
    """`jestkit demo --policies '[]'` (before: trained the reference and uniform, then wrote a
    results.json that compared nothing)."""
    args = [a if a != "[learnability-joint]" else "[]" for a in DEMO]
    refused(cli_main([*args, "--out", str(tmp_path / "d")]), capsys, "--policies is empty")
    assert not (tmp_path / "d").exists()


def test_overwrite_removes_what_the_previous_run_drew_and_evaluated(finished, tmp_path):
    """--overwrite deletes the old run's curves.png and eval.json with its checkpoint and
    result (before: they stayed beside the new run, describing the old one)."""
    out = copy_of(finished, tmp_path)
    (out / "curves.png").write_bytes(b"old curves")
    (out / "eval.json").write_text('{"old": 1}')
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):  # stop right after the folder is claimed
        from jestkit.engine.rundir import claimed_run

        with claimed_run(out, overwrite=True):
            raise SystemExit
    assert sorted(p.name for p in out.iterdir()) == [".jestkit.lock", "config.yaml", "notes.txt"]


def test_nothing_is_written_inside_a_reference_or_its_cache(tmp_path, capsys):
    """`jestkit train --out REF/cache` and `--out REF/cache/x` (before: a train run written into
    a reference's cache folder)."""
    ref = tmp_path / "ref"
    (ref / "cache").mkdir(parents=True)
    (ref / "reference.json").write_text("{}")
    (ref / "cache" / "manifest.json").write_text("{}")
    for out in (ref / "cache", ref / "cache" / "x", ref / "sub"):
        refused(cli_main([*TRAIN, "--out", str(out)]), capsys, "reference")
    assert sorted(p.name for p in ref.rglob("*")) == ["cache", "manifest.json", "reference.json"]


def test_out_the_root_folder_says_so(capsys):
    """`--out /` (before: "/bin is a symlink")."""
    refused(cli_main([*TRAIN, "--out", "/"]), capsys, "root")


def test_a_symlink_among_files_jestkit_never_writes_is_not_the_message(tmp_path, capsys):
    """A train run into a folder holding a link of yours (to a data folder): the link is not
    jestkit's business; one at a name the run writes still is (see above)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "data").symlink_to(tmp_path)
    from jestkit.engine.rundir import check_run_dir

    check_run_dir(out)


def test_a_config_yaml_of_another_command_replayed_says_whose(finished, capsys):
    """`jestkit reference --config TRAIN_RUN/config.yaml` (before: "Unable to load config")."""
    code = cli_main(["reference", "--config", str(finished / "config.yaml")])
    refused(code, capsys, "the config.yaml of `jestkit train`", "jestkit train --config")
