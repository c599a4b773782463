"""What a run leaves, through the installed `jestkit` as a user types it: metrics.jsonl of a
killed run, `--resume latest`, numbered checkpoints, the open_clip export loaded by open_clip and
clip_benchmark with the same embeddings, clip_benchmark's result files and CSV, subsets of
plain img2dataset shards, config.yaml's sections, the help, and open_clip's notes kept quiet."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import yaml
from shard_files import TINY_SIG, write_eval_set, write_shards

from jestkit.cli import main as cli_main
from jestkit.engine.reports import read_metrics

JESTKIT = Path(sys.executable).parent / "jestkit"
CLIP_BENCHMARK = Path(sys.executable).parent / "clip_benchmark"
QUIET_NOTES = ("no CLIP weights found", "No pretrained weights loaded for model 'local-dir:")


def in_process(*args: str, cwd: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    """The CLI's main() here (a refusal or a quick command: no interpreter to start)."""
    monkeypatch.chdir(cwd)
    code = cli_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def jestkit(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run([str(JESTKIT), *args], cwd=cwd, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    if check:
        assert run.returncode == 0, f"jestkit {' '.join(args)}\n{run.stdout}\n{run.stderr}"
    return run


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    (root / "tiny-sig.json").write_text(json.dumps(TINY_SIG))
    write_shards(root / "pool", shards=2, per_shard=60, seed=0)
    write_shards(root / "plain", shards=2, per_shard=40, seed=2, uids=False)
    write_eval_set(root / "wds_shapes", "zeroshot", per_shard=30)
    return root


TRAIN = ["train", "--shards.pattern", "pool/shards-{0000..0001}.tar", "--open_clip",
         "tiny-sig.json", "--selection.policy", "uniform", "--training.batch_size", "16",
         "--training.checkpoint_every", "2", "--training.save_every", "4",
         "--training.keep_checkpoints", "2", "--training.eval_every", "100", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def killed_and_resumed(root):
    """`jestkit train` killed (SIGKILL) once it logged 5 steps, then `--resume latest`."""
    args = [*TRAIN, "--training.steps", "24", "--out", "runs/uniform"]
    metrics = root / "runs" / "uniform" / "metrics.jsonl"
    proc = subprocess.Popen([str(JESTKIT), *args], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(read_metrics(metrics, "train")) >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    logged = read_metrics(metrics, "train")
    resumed = jestkit(*args[:-2], "--out", "runs/uniform", "--resume", "latest", cwd=root)
    return {"logged": logged, "stderr": stderr.decode(), "resumed": resumed,
            "out": root / "runs" / "uniform"}  # fmt: skip


def test_killed_run_keeps_every_step_it_logged(killed_and_resumed):
    logged = killed_and_resumed["logged"]
    assert len(logged) >= 5
    assert [r["step"] for r in logged] == list(range(1, len(logged) + 1))
    for row in logged:
        assert {"loss", "lr", "samples_per_second", "data_wait", "flops", "selection"} <= set(row)
    # resumed with `--resume latest` (open_clip_train's spelling): every step once
    out = killed_and_resumed["out"]
    assert "resumed uniform" in killed_and_resumed["resumed"].stdout
    rows = read_metrics(out / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == list(range(1, 25))
    result = json.loads((out / "result.json").read_text())
    assert [r["loss"] for r in rows] == pytest.approx(result["losses"])
    # numbered checkpoints, the last 2 kept; curves.png with the loss curve
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_20.pt", "step_24.pt"]
    assert (out / "curves.png").stat().st_size > 10_000
    for note in QUIET_NOTES:  # open_clip's notes about jestkit's temporary config folders
        assert note not in killed_and_resumed["stderr"] + killed_and_resumed["resumed"].stderr


def test_export_loads_in_open_clip_and_clip_benchmark(root, killed_and_resumed):
    """The open_clip_model.pt the run left, and `jestkit export` of a numbered checkpoint, load
    with open_clip's and clip_benchmark's own loaders and embed as jestkit's model does."""
    from clip_benchmark.models import load_clip

    from jestkit.openclip import load_reference

    out = killed_and_resumed["out"]
    exported = out / "open_clip_model.pt"
    saved = torch.load(exported, weights_only=True)
    assert set(saved) == {"epoch", "name", "state_dict"} and saved["epoch"] == 24
    jestkit("export", "runs/uniform/checkpoints/step_20.pt", "--out", "step20.pt", cwd=root)
    assert torch.load(root / "step20.pt", weights_only=True)["epoch"] == 20
    open_clip.add_model_config(str(out / "open_clip_model.json"))  # the config, written beside
    theirs, _, preprocess = open_clip.create_model_and_transforms(
        "open_clip_model", pretrained=str(exported))
    benchmark, _, _ = load_clip("open_clip", "open_clip_model", str(exported), None, "cpu")
    ours = load_reference(str(root / "tiny-sig.json"), str(out / "checkpoint.pt"))  # jestkit's
    theirs.eval()
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = open_clip.get_tokenizer("open_clip_model")([f"a red circle number {i}"
                                                        for i in range(6)])  # fmt: skip
    with torch.no_grad():
        for model in (theirs, benchmark):
            torch.testing.assert_close(model.encode_image(images), ours.encode_image(images),
                                       atol=1e-5, rtol=1e-5)  # fmt: skip
            torch.testing.assert_close(model.encode_text(texts), ours.encode_text(texts),
                                       atol=1e-5, rtol=1e-5)  # fmt: skip
    step20 = load_reference(str(root / "tiny-sig.json"), str(root / "step20.pt"))
    assert not torch.equal(step20.visual.conv1.weight, ours.visual.conv1.weight)


def test_resume_from_a_numbered_checkpoint(root, killed_and_resumed, capsys, monkeypatch):
    out = killed_and_resumed["out"]
    code, stdout, _ = in_process(*TRAIN, "--training.steps", "24", "--out", "runs/uniform",
                                 "--resume", "runs/uniform/checkpoints/step_20.pt", cwd=root,
                                 capsys=capsys, monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0 and "already finished" in stdout  # a finished run is left as it is
    code, _, err = in_process(*TRAIN, "--training.steps", "24", "--out", "runs/other",
                              "--resume", "runs/uniform/checkpoints/step_20.pt", cwd=root,
                              capsys=capsys, monkeypatch=monkeypatch)  # fmt: skip
    assert code == 2 and "is not a checkpoint of the run in runs/other" in err
    assert (out / "result.json").is_file()


def test_config_yaml_keeps_the_sections_used(killed_and_resumed):
    config = yaml.safe_load((killed_and_resumed["out"] / "config.yaml").read_text())
    assert "data" not in config and "model" not in config  # Fashion-MNIST, jestkit's encoder
    assert config["shards"]["pattern"] == "pool/shards-{0000..0001}.tar"
    assert config["open_clip"] == "tiny-sig.json" and config["report_to"] == "jsonl"


def test_export_refuses_jestkit_own_model(root, capsys, monkeypatch):
    code, _, _ = in_process("train", "--shards.pattern", "plain/shards-{0000..0001}.tar",
                            "--selection.policy", "uniform", "--training.batch_size", "16",
                            "--training.steps", "2", "--quiet", "--out", "runs/dual", cwd=root,
                            capsys=capsys, monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0 and not (root / "runs" / "dual" / "open_clip_model.pt").exists()
    code, _, err = in_process("export", "runs/dual", cwd=root, capsys=capsys,
                              monkeypatch=monkeypatch)  # fmt: skip
    assert code == 2 and "holds jestkit's own dual encoder, not an open_clip model" in err


def test_subset_of_plain_img2dataset_shards(root, killed_and_resumed, capsys, monkeypatch):
    """Plain img2dataset shards have no uids: a DataComp subset is refused before any sample is
    scored, naming the way forward; a keys file works."""
    reference = ["--shards.pattern", "plain/shards-{0000..0001}.tar", "--open_clip",
                 "tiny-sig.json", "--reference", "runs/uniform/checkpoint.pt", "--quiet"]
    code, _, err = in_process("score", *reference, "--out", "runs/score-npy", "--subset",
                              "keep.npy", cwd=root, capsys=capsys,
                              monkeypatch=monkeypatch)  # fmt: skip
    assert code == 2
    assert "80 of the 80 samples' ids are not (e.g. '00000000'" in err
    assert "--subset keep.txt" in err
    assert not (root / "runs" / "score-npy" / "cache").exists()  # nothing was scored
    jestkit("score", *reference, "--out", "runs/score-txt", "--subset", "keep.txt", cwd=root)
    keys = (root / "keep.txt").read_text().splitlines()
    assert len(keys) == 24 and keys == sorted(keys)  # 30 % of 80
    assert all(len(k) == 8 and k.isdigit() for k in keys)


def test_eval_writes_clip_benchmark_results(root, killed_and_resumed):
    """`jestkit eval` with a clip_benchmark dataset name and root: its result files make
    `clip_benchmark build`'s CSV."""
    run = jestkit("eval", "--checkpoint", "runs/uniform/checkpoint.pt", "--eval.zeroshot",
                  "wds/shapes", "--eval.dataset_root", "wds_{dataset_cleaned}", cwd=root)
    assert "1 clip_benchmark result file(s)" in run.stdout
    folder = root / "runs" / "uniform" / "clip_benchmark"
    [file] = list(folder.glob("*.json"))
    assert file.name == "shapes_checkpoint.pt_tiny-sig.json_en_zeroshot_classification.json"
    dump = json.loads(file.read_text())
    ours = json.loads((root / "runs" / "uniform" / "eval.json").read_text())["metrics"]
    assert dump["dataset"] == "wds/shapes" and dump["task"] == "zeroshot_classification"
    assert dump["pretrained"] == "runs/uniform/checkpoint.pt" and dump["model"] == "tiny-sig.json"
    assert dump["metrics"] == {k.removeprefix("wds/shapes/"): v for k, v in ours.items()}
    built = subprocess.run([str(CLIP_BENCHMARK), "build", str(file), "--output", "bench.csv"],
                           cwd=root, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr
    [row] = list(csv.DictReader((root / "bench.csv").read_text().splitlines()))
    assert row["dataset"] == "wds/shapes"
    assert float(row["acc1"]) == pytest.approx(ours["wds/shapes/acc1"])


def test_help_summaries_whole_and_score_help_about_shards(capsys):
    from jestkit.cli import COMMANDS, summary

    def help_of(*args):
        with pytest.raises(SystemExit):
            cli_main([*args, "--help"])
        return capsys.readouterr().out

    top = " ".join(help_of().split())
    for cls in COMMANDS.values():
        assert summary(cls) in top
    score = help_of("score")
    assert "fashion" not in score.lower()
    assert "--subset" in score and "FILE.txt" in score


def test_jsonl_only_unless_asked(killed_and_resumed):
    out = killed_and_resumed["out"]
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists()
    assert np.isfinite([r["loss"] for r in read_metrics(out / "metrics.jsonl", "train")]).all()
