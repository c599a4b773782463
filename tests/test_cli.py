"""The CLI: every setting a flag with a line of help; a run's config.yaml replays it; switches
are bare; errors name the flag; --version; every command's help ends with an example that runs."""

import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from jestkit.cli import EXAMPLES, _command, _save_config, build_parser, flag_message
from jestkit.cli import main as cli_main
from jestkit.engine.checkpoint import load_checkpoint

JESTKIT = Path(sys.executable).parent / "jestkit"  # the console script pip installed


def _train(argv):
    parser = build_parser()
    args = parser.parse_args(["train", *argv])
    command, sub, quiet, _ = _command(parser, args)
    return command, sub, args, quiet


def test_flags_reach_every_section(capsys):
    cmd, _, _, quiet = _train(
        ["--selection.normalize_gains", "true", "--selection.block_size", "64",
         "--training.steps", "7", "--data.limit", "600", "--model.dim", "32", "--quiet"]
    )  # fmt: skip
    assert cmd.selection.normalize_gains and cmd.selection.block_size == 64
    assert cmd.training.steps == 7 and cmd.data.limit == 600 and cmd.model.dim == 32 and quiet
    assert cmd.train_config().training.steps == 7


def test_help_gives_every_flag_a_sentence(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert "share of the super-batch left out" in text  # selection.filter_ratio
    assert "divide the gains by |C| + 1" in text  # selection.normalize_gains
    assert "AdamW's peak learning rate" in text  # training.lr


def test_saved_config_replays_the_run(tmp_path):
    cmd, sub, args, _ = _train(["--selection.filter_ratio", "0.5", "--scoring.patch_size", "14"])
    _save_config(sub, args["train"], tmp_path)
    assert (tmp_path / "config.yaml").read_text().startswith("# jestkit train: ")
    replayed, _, _, _ = _train(["--config", str(tmp_path / "config.yaml")])
    assert replayed == cmd
    overridden, _, _, _ = _train(
        ["--config", str(tmp_path / "config.yaml"), "--training.lr", "0.1"]
    )
    assert overridden.training.lr == 0.1 and overridden.selection.filter_ratio == 0.5


def test_cli_errors_are_clear(tmp_path, capsys):
    code = cli_main(
        [
            "train",
            "--reference",
            str(tmp_path / "nope"),
            "--data.limit",
            "600",
            "--data.curated_size",
            "100",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ]
    )
    assert code == 2
    assert "jestkit reference" in capsys.readouterr().err
    code = cli_main(["train", "--data.data_dir", str(tmp_path), "--quiet"])
    assert code == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err
    code = cli_main(["train", "--selection.filter_ratio", "1.0", "--quiet"])
    assert code == 2
    assert "filter_ratio" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["train", "--selection.policy", "hardest"])


def test_resume_and_overwrite_are_bare_switches_never_replayed(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["train", "--resume", "--training.steps", "3"])
    cmd, sub, _, switches = _command(parser, args)
    assert switches.resume and not switches.overwrite and cmd.training.steps == 3
    _save_config(sub, args["train"], tmp_path)
    text = (tmp_path / "config.yaml").read_text()
    assert "resume" not in text and "overwrite" not in text  # how to run, not what
    args = parser.parse_args(["reference", "--overwrite"])
    assert _command(parser, args)[3].overwrite
    demo = parser.parse_args(["demo", "--filter_keep", "null"])  # the demo without its filter run
    assert _command(parser, demo)[0].filter_keep is None
    assert _command(parser, parser.parse_args(["demo"]))[0].filter_keep == 0.3
    with pytest.raises(SystemExit):  # one flag for the reference
        parser.parse_args(["train", "--reference_dir", "runs/reference"])


def test_errors_name_the_flag(tmp_path, capsys):
    code = cli_main(["train", "--shards.pattern", "x.tar", "--shards.max_bad_fraction", "2"])
    assert code == 2
    assert "--shards.max_bad_fraction must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert cli_main(["demo", "--reference.batch_size", "0", "--quiet"]) == 2
    assert "--reference.batch_size must be a positive int" in capsys.readouterr().err
    assert cli_main(["demo", "--filter_keep", "1.5", "--quiet", "--out", str(tmp_path / "d")]) == 2
    assert "--filter_keep must be in (0, 1), or null for no filter run, got 1.5" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "d").exists()  # refused before any work
    assert cli_main(["train", "--model.dim", "0", "--quiet"]) == 2
    assert "--model.dim must be a positive int" in capsys.readouterr().err
    sections = {"reference": {"steps"}, "shards": {"seed"}}
    # file names and words that are not a section's field stay as they are
    assert flag_message("no reference.json at reference.steps", sections) == (
        "no reference.json at --reference.steps"
    )
    assert flag_message("seed must be >= 0", sections, "shards") == "--shards.seed must be >= 0"


def test_version_through_the_console_script():
    run = subprocess.run([str(JESTKIT), "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == f"jestkit {version('jestkit')}"


def test_every_help_ends_with_its_example(capsys):
    for name, example in EXAMPLES.items():
        with pytest.raises(SystemExit):
            build_parser().parse_args([name, "--help"])
        text = capsys.readouterr().out.rstrip()
        assert text.endswith(example.rstrip()), name


def _example(name: str) -> list[str]:
    line = EXAMPLES[name].split("\n(")[0].replace("\\\n", " ")
    return shlex.split(line)


def test_the_fashion_examples_run(tmp_path):
    """The reference, train, plan and demo examples of --help, run as written by the console
    script (the score example runs in tests/own/test_readme_own.py, beside the files it needs)."""
    for name in ("reference", "train", "plan", "demo"):
        command = _example(name)
        assert command[:2] == ["jestkit", name]
        run = subprocess.run([str(JESTKIT), *command[1:], "--quiet"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=900)  # fmt: skip
        assert run.returncode == 0, f"{shlex.join(command)}\n{run.stdout}\n{run.stderr}"
    assert (tmp_path / "runs" / "jest-small" / "result.json").is_file()
    assert (tmp_path / "runs" / "plan-small" / "plan.json").is_file()
    assert (tmp_path / "runs" / "demo-small" / "results.json").is_file()


SMALL = ["--data.limit", "1500", "--data.curated_size", "400", "--model.dim", "32",
         "--model.depth", "1", "--model.text_depth", "1", "--model.heads", "2",
         "--model.embed_dim", "32", "--training.batch_size", "16", "--training.steps", "2",
         "--training.eval_every", "null", "--quiet"]  # fmt: skip


def test_train_runs_the_offline_filter_and_filter_plus_jest(data, reference_dir, tmp_path,
                                                            monkeypatch, capsys):  # fmt: skip
    """`jestkit train --filter_keep K`: uniform (the filter baseline) or a selecting policy
    (filter + JEST) on the share of the pool the reference scores highest, as the benchmark
    and the demo run it (jestkit.fashion.reference.filter_pool)."""
    from jestkit.fashion.reference import filter_pool

    kept = filter_pool(data, reference_dir, 0.3, "sigmoid")
    monkeypatch.chdir(tmp_path)  # the default run folder: runs/train/filter-30-uniform
    for policy, name in (("uniform", "filter-30-uniform"),
                         ("learnability", "filter-30-learnability-joint")):  # fmt: skip
        code = cli_main(["train", "--reference", str(reference_dir), "--filter_keep", "0.3",
                         "--selection.policy", policy, *SMALL])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        assert f"on the {len(kept.kept)} pairs the filter kept" in capsys.readouterr().out
        assert _kept(tmp_path / "runs" / "train" / name) == kept.kept_fingerprint()
    whole = cli_main(["train", "--reference", str(reference_dir), "--selection.policy",
                      "uniform", "--out", "whole", *SMALL])  # fmt: skip
    assert whole == 0 and _kept(tmp_path / "whole") is None


def _kept(run: Path) -> str | None:
    """The fingerprint of the pool rows a run drew from (None: the whole pool)."""
    assert (run / "result.json").is_file()
    return load_checkpoint(run / "checkpoint.pt")["run"]["kept_fingerprint"]


def test_train_filter_keep_errors(reference_dir, tmp_path, capsys):
    bad = {
        ("--filter_keep", "1.0"): "--filter_keep must be in (0, 1), or null for the whole pool",
        ("--filter_keep", "0.3", "--shards.pattern", "x.tar"): "jestkit score --keep K --subset",
        ("--filter_keep", "0.3", "--reference", str(tmp_path / "nope")): "must be a folder",
    }
    for flags, message in bad.items():
        argv = ["train", "--reference", str(reference_dir), *flags, "--out",
                str(tmp_path / "run"), *SMALL]  # fmt: skip
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("jestkit train: error:") and message in err, err
        assert not (tmp_path / "run").exists()  # refused before any work
