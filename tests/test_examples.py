"""The recipes in examples/ run as a user runs them (`python examples/FILE.py ...`, the
interpreter with the extras `make test` installs: open_clip_train, lightning), a few steps on
tiny img2dataset shards, with a reference exported from a jestkit checkpoint; their outputs
load back in open_clip."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from shard_files import TINY_SIG, write_shards

from jestkit.openclip import create_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Shards in img2dataset's layout, tiny-sig.json, and a reference in open_clip's layout."""
    root = tmp_path_factory.mktemp("examples")
    (root / "tiny-sig.json").write_text(json.dumps(TINY_SIG))
    write_shards(root / "pool", shards=2, per_shard=100, seed=0)
    torch.manual_seed(1)
    reference = create_model(TINY_SIG)
    torch.save({"epoch": 1, "name": "ref", "state_dict": reference.state_dict()},
               root / "reference.pt")  # fmt: skip
    return root


def run_example(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, f"{name}\n{run.stdout}\n{run.stderr}"
    return run


def _loads(root: Path, path: Path) -> None:
    """The file is open_clip_train's layout and loads into the tiny config with open_clip."""
    saved = torch.load(path, weights_only=True)
    assert {"epoch", "name", "state_dict"} <= set(saved)
    open_clip.add_model_config(str(root / "tiny-sig.json"))
    model = open_clip.create_model("tiny-sig", pretrained=str(path))
    assert torch.equal(model.logit_scale, saved["state_dict"]["logit_scale"])


def test_open_clip_train_recipe(files):
    run = run_example("jest_open_clip_train.py", [
        "--model", "tiny-sig.json", "--siglip", "--dataset-type", "webdataset",
        "--train-data", "pool/shards-{0000..0001}.tar", "--train-num-samples", "200",
        "--batch-size", "40", "--lr", "1e-3", "--warmup", "2", "--epochs", "1", "--workers", "1",
        "--reference", "reference.pt", "--n-chunks", "4", "--max-steps", "3",
        "--out", "runs/oct"], files)  # fmt: skip
    assert "3 steps of 5" in run.stdout  # B = 40 of 200 pairs a step: 5 steps an epoch
    _loads(files, files / "runs" / "oct" / "epoch_1.pt")


def test_lightning_recipe(files):
    run_example("jest_lightning.py", [
        "--model", "tiny-sig.json", "--shards", "pool/shards-{0000..0001}.tar",
        "--reference", "reference.pt", "--batch-size", "40", "--n-chunks", "4",
        "--max-steps", "3", "--log-every", "1", "--out", "runs/lightning"], files)  # fmt: skip
    _loads(files, files / "runs" / "lightning" / "open_clip_model.pt")
    [metrics] = list((files / "runs" / "lightning").glob("**/metrics.csv"))  # CSVLogger's
    rows = list(csv.DictReader(metrics.read_text().splitlines()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
