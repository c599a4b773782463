"""Hostile and careless input (issue 11): planted checkpoints, wrong arguments, unusable or
already used output folders, a reference rebuilt in place, resume with changed settings."""

import json
import pickle
import re
from dataclasses import replace

import pytest
import torch
from helpers import MODEL, POOL, TINY

from jestkit.cli import main as cli_main
from jestkit.engine.checkpoint import CheckpointError, load_checkpoint
from jestkit.engine.config import TrainingConfig
from jestkit.engine.loop import Trainer
from jestkit.engine.rundir import RunDirError, check_run_dir, run_lock
from jestkit.fashion.fashion_mnist import find_root
from jestkit.fashion.learner import train_learner
from jestkit.fashion.reference import load_reference, train_reference
from jestkit.models.factory import ModelConfig, build_model


def _trainer(data, reference_dir, out, config=TINY):
    torch.manual_seed(0)
    model = build_model(MODEL, len(data.vocab), "sigmoid")
    ref = load_reference(reference_dir, data, "sigmoid")
    return Trainer(model, config, data.pool_source(), ref, None, out, progress=False)


# -- item 1: a checkpoint cannot run code ---------------------------------------------------


class _Planted:
    """Unpickling this calls os.system: what a hostile checkpoint.pt would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_planted_checkpoint_runs_no_code(data, reference_dir, tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    with open(out / "checkpoint.pt", "wb") as f:
        pickle.dump({"step": 3, "payload": _Planted(marker)}, f)
    # the same payload in torch.save's zip format
    torch.save({"step": 3, "payload": _Planted(marker)}, out / "zipped.pt")
    for name in ("checkpoint.pt", "zipped.pt"):
        (out / name).replace(out / "checkpoint.pt")
        with pytest.raises(CheckpointError, match="not a jestkit checkpoint"):
            _trainer(data, reference_dir, out).resume()
        assert not marker.exists()


def test_checkpoints_hold_only_plain_types(data, reference_dir, tmp_path):
    trainer = _trainer(data, reference_dir, tmp_path)
    trainer.run(stop_at=3)
    torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # no pickled objects
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_a_flipped_byte_in_a_checkpoint_is_refused(data, reference_dir, tmp_path):
    _trainer(data, reference_dir, tmp_path).run(stop_at=3)
    path = tmp_path / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # torch.load alone would load this without a word
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged"):
        _trainer(data, reference_dir, tmp_path).resume()


# -- item 2: an explicit argument that cannot be honoured is an error -----------------------


def test_missing_data_dir_never_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("JESTKIT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
    with pytest.raises(FileNotFoundError, match="does/not/exist"):
        find_root(tmp_path / "does/not/exist")
    monkeypatch.setenv("JESTKIT_FASHION_MNIST", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="JESTKIT_FASHION_MNIST"):
        find_root()


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--model.embed_dim", "0", "embed_dim"),
        ("--model.dim", "-8", "dim"),
        ("--model.depth", "-1", "depth"),
        ("--training.warmup_steps", "-5", "warmup_steps"),
        ("--training.lr", "-0.1", "lr"),
        ("--training.lr", "0", "lr"),
        ("--training.weight_decay", "-1", "weight_decay"),
        ("--scoring.patch_size", "5", "patch_size"),
        ("--data.limit", "-5", "limit"),
    ],
)
def test_wrong_values_fail_before_any_work(tmp_path, capsys, flag, value, says):
    out = tmp_path / "run"
    code = cli_main(["train", flag, value, "--out", str(out), "--quiet"])
    assert code == 2
    assert says in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_curated_larger_than_the_limit_is_a_clear_error(tmp_path, capsys):
    code = cli_main(["reference", "--data.limit", "100", "--data.curated_size", "200",
                     "--out", str(tmp_path / "ref"), "--quiet"])  # fmt: skip
    assert code == 2 and "curated_size" in capsys.readouterr().err


# -- item 3: the output folder is checked before any work, locked, never silently reused ----


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("mine")
    code = cli_main(["train", "--out", str(target), "--reference", str(tmp_path / "nope"),
                     "--quiet"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and target.read_text() == "mine"


def test_finished_run_is_not_overwritten(data, reference_dir, tmp_path):
    out = tmp_path / "run"
    first = train_learner(data, MODEL, TINY, reference_dir, out, progress=False)
    before = (out / "result.json").read_bytes(), (out / "checkpoint.pt").read_bytes()
    with pytest.raises(RunDirError, match="--overwrite"):
        train_learner(data, MODEL, TINY, reference_dir, out, progress=False)
    assert ((out / "result.json").read_bytes(), (out / "checkpoint.pt").read_bytes()) == before
    again = train_learner(data, MODEL, TINY, reference_dir, out, progress=False, overwrite=True)
    assert again["final"] == first["final"]  # the same run, written anew


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    held, again = run_lock(tmp_path / "run"), run_lock(tmp_path / "run")
    with held, pytest.raises(RunDirError, match="another jestkit run"), again:
        pass
    with run_lock(tmp_path / "run"):  # released at the end
        pass


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(RunDirError, match="no checkpoint"):
        check_run_dir(tmp_path / "run", resume=True)
    with pytest.raises(RunDirError, match="contradict"):
        check_run_dir(tmp_path / "run", resume=True, overwrite=True)


# -- item 4: a reference is never overwritten in place --------------------------------------


def test_reference_is_not_rebuilt_in_place(data, tmp_path):
    out = tmp_path / "ref"
    small = TrainingConfig(steps=2, batch_size=16, eval_every=None)
    train_reference(data, MODEL, small, "sigmoid", out, progress=False)
    before = {p.name: p.read_bytes() for p in (out / "model.pt", out / "reference.json")}
    other = replace(small, seed=3)
    with pytest.raises(RunDirError, match="--overwrite"):
        train_reference(data, MODEL, other, "sigmoid", out, progress=False)
    assert {p.name: p.read_bytes() for p in (out / "model.pt", out / "reference.json")} == before
    info = train_reference(data, MODEL, other, "sigmoid", out, progress=False, overwrite=True)
    # the new reference replaced the old one whole: model, reference.json and cache agree
    saved = torch.load(out / "model.pt", weights_only=True)
    from jestkit.dropin.cache import fingerprint_state_dict

    assert fingerprint_state_dict(saved["model"]) == info["model_fingerprint"]
    assert json.loads((out / "reference.json").read_text())["config"]["seed"] == 3
    load_reference(out, data, "sigmoid")  # the cache opens with the new fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"]  # nothing left beside it


# -- item 6: resume is exact or refused ------------------------------------------------------


def test_resume_with_other_steps_is_refused(data, reference_dir, tmp_path):
    _trainer(data, reference_dir, tmp_path).run(stop_at=3)
    longer = replace(TINY, training=replace(TINY.training, steps=12))
    with pytest.raises(ValueError, match="training.steps"):
        _trainer(data, reference_dir, tmp_path, longer).resume()


def test_resume_with_other_data_or_model_is_refused(data, reference_dir, tmp_path):
    out = tmp_path / "run"
    train_learner(data, MODEL, TINY, reference_dir, out, progress=False)
    wider = replace(MODEL, dim=64, heads=2)
    with pytest.raises(ValueError, match="model.dim"):
        train_learner(data, wider, TINY, reference_dir, out, resume=True, progress=False)


def test_truncated_checkpoint_is_a_message(data, reference_dir, tmp_path):
    trainer = _trainer(data, reference_dir, tmp_path)
    trainer.run(stop_at=3)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        _trainer(data, reference_dir, tmp_path).resume()


# -- item 7: the smaller ones ----------------------------------------------------------------


def test_demo_refuses_selection_policy(tmp_path, capsys):
    code = cli_main(["demo", "--selection.policy", "hard_learner", "--out", str(tmp_path / "d"),
                     "--quiet"])  # fmt: skip
    assert code == 2 and "--policies" in capsys.readouterr().err


def test_data_errors_speak_the_cli(tmp_path, capsys):
    code = cli_main(["train", "--data.data_dir", str(tmp_path), "--out", str(tmp_path / "r"),
                     "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--data.data_dir" in err and "root=" not in err


def test_every_flag_says_what_it_does(capsys):
    from jestkit.cli import build_parser

    for command in ("train", "reference", "demo"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = capsys.readouterr().out
        flags = [line for line in text.splitlines() if line.strip().startswith("--")]
        assert len(flags) > 20
        for chunk in text.split("\n  --")[1:]:
            name, *rest = chunk.split(maxsplit=1)
            described = (rest[0] if rest else "").split("(type:")[0].split("(default")[0]
            words = re.findall(r"\b[a-z]{2,}\b", described)
            assert len(words) >= 2, f"--{name} has no description: {chunk!r}"


def test_model_config_is_checked():
    with pytest.raises(ValueError, match="embed_dim"):
        ModelConfig(embed_dim=0)
    with pytest.raises(ValueError, match="lr"):
        TrainingConfig(lr=float("nan"))
    assert POOL.limit == 1500  # the helpers' pool stays valid
