"""open_clip configs and checkpoints that do not fit each other end in a one-line message naming
what was given, not a raw RuntimeError or UnpicklingError (issue 16, item 11)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import MODEL
from shard_files import TINY_SIG, write_shards

from jestkit.cli import main as cli_main
from jestkit.engine.checkpoint import save_checkpoint
from jestkit.models.factory import build_model
from jestkit.openclip import create_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("openclip_errors")
    pattern = write_shards(root / "shards", shards=1, per_shard=32)
    (root / "tiny.json").write_text(json.dumps(TINY_SIG))
    (root / "wider.json").write_text(json.dumps({**TINY_SIG, "embed_dim": 48}))
    torch.manual_seed(0)
    torch.save({"state_dict": create_model(str(root / "tiny.json")).state_dict()},
               root / "tiny.pt")  # fmt: skip
    save_checkpoint({"step": 1, "config": {},
                     "model": build_model(MODEL, 512, "sigmoid").state_dict()},
                    root / "fashion.pt")  # fmt: skip
    return root, pattern


def clear(code, capsys, *says):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for s in says:
        assert s in err, err


def score(files, *args):
    root, pattern = files
    return cli_main(["score", "--shards.pattern", pattern, "--quiet", "--batch_size", "8",
                     "--out", str(root / "score-out"), *args])  # fmt: skip


def train(files, *args):
    root, pattern = files
    return cli_main(["train", "--shards.pattern", pattern, "--quiet", "--training.steps", "1",
                     "--training.batch_size", "8", "--selection.n_chunks", "2", "--out",
                     str(root / "train-out"), "--overwrite", *args])  # fmt: skip


def test_a_config_that_does_not_fit_the_checkpoint(files, capsys):
    root, _ = files
    clear(score(files, "--open_clip", str(root / "wider.json"), "--reference",
                str(root / "tiny.pt")), capsys, "tiny.pt", "wider.json")  # fmt: skip
    clear(train(files, "--open_clip", str(root / "tiny.json"), "--reference_model",
                str(root / "wider.json"), "--reference", str(root / "tiny.pt")), capsys,
          "tiny.pt", "wider.json")  # fmt: skip


def test_an_unknown_open_clip_name(files, capsys):
    clear(train(files, "--open_clip", "no-such-model", "--selection.policy", "uniform"), capsys,
          "no-such-model")  # fmt: skip


def test_a_json_file_or_a_fashion_checkpoint_as_the_reference(files, capsys):
    root, _ = files
    for given in ("tiny.json", "fashion.pt"):
        clear(score(files, "--open_clip", str(root / "tiny.json"), "--reference",
                    str(root / given)), capsys, given)  # fmt: skip
        clear(train(files, "--open_clip", str(root / "tiny.json"), "--reference",
                    str(root / given), "--selection.loss", "sigmoid"), capsys, given)  # fmt: skip


def test_scoring_views_an_open_clip_learner_cannot_take_are_refused_before_any_record(
    files, capsys
):
    """A patch size that does not divide the 32 x 32 images (for scoring, or for multi-resolution
    training): one line naming the flag and the model, and no record written."""
    root, _ = files
    out = root / "train-out"
    for flags in (["--scoring.patch_size", "12", "--scoring.multires_fraction", "0.5",
                   "--selection.policy", "uniform"],
                  ["--scoring.patch_size", "5", "--scoring.text_token_drop", "0.5",
                   "--selection.policy", "hard_learner"]):  # fmt: skip
        clear(train(files, "--open_clip", str(root / "tiny.json"), *flags), capsys,
              f"--scoring.patch_size {flags[1]} does not divide", "tiny.json")  # fmt: skip
        assert not (out / "config.yaml").exists()


@pytest.mark.parametrize("text, says", [
    ('{"embed_dim": 32, "vision_cfg": {', "broken.json is not valid JSON"),
    ("[1, 2]", "broken.json holds a JSON list"),
])  # fmt: skip
def test_a_broken_open_clip_json_names_the_file(files, capsys, text, says):
    """A truncated --open_clip JSON file, or one that holds a list (before: "error: Expecting
    property name ..." with no file named, and an AttributeError traceback)."""
    root, _ = files
    (root / "broken.json").write_text(text)
    clear(train(files, "--open_clip", str(root / "broken.json"), "--selection.policy",
                "uniform"), capsys, says)  # fmt: skip
