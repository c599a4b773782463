"""The CLI: every setting a flag with a line of help; a run's config.yaml replays it."""

import pytest

from jestkit.cli import _command, _save_config, build_parser
from jestkit.cli import main as cli_main


def _train(argv):
    parser = build_parser()
    args = parser.parse_args(["train", *argv])
    command, sub, quiet = _command(parser, args)
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
            "--reference_dir",
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
