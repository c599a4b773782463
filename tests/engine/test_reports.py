"""Metrics while the run goes (jestkit.engine.reports) and numbered checkpoints: metrics.jsonl
holds every step and evaluation with the step's statistics, once each across a resume; the
TensorBoard files read back with tensorboard's own reader; W&B logs offline; numbered
checkpoints are kept as open_clip_train keeps them and resume exactly."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import MODEL, TINY

from jestkit.engine.checkpoint import load_checkpoint, numbered_checkpoints
from jestkit.engine.config import TrainingConfig
from jestkit.engine.loop import Trainer
from jestkit.engine.reports import parse_report_to, read_metrics
from jestkit.fashion.evaluate import evaluator
from jestkit.fashion.reference import load_reference
from jestkit.models.factory import build_model


def _trainer(data, reference_dir, out, config=TINY, **kwargs):
    torch.manual_seed(0)
    model = build_model(MODEL, len(data.vocab), "sigmoid")
    ref = load_reference(reference_dir, data, "sigmoid")
    return Trainer(model, config, data.pool_source(), ref, evaluator(data), out, progress=False,
                   **kwargs)  # fmt: skip


def test_metrics_jsonl_every_step_and_evaluation(data, reference_dir, tmp_path):
    result = _trainer(data, reference_dir, tmp_path).run()
    train = read_metrics(tmp_path / "metrics.jsonl", "train")
    assert [r["step"] for r in train] == list(range(1, 7))
    assert [r["loss"] for r in train] == pytest.approx(result["losses"])
    assert [r["data_wait"] for r in train] == pytest.approx(result["data_wait"])
    first = train[0]
    assert first["lr"] == pytest.approx(TINY.training.lr / TINY.training.warmup)  # warm-up step 1
    assert first["samples_per_second"] == pytest.approx(16 / first["step_seconds"])
    assert first["selection"]["batch_size"] == 16 and first["selection"]["super_batch_size"] == 80
    assert set(first["selection"]["selected_noise_fraction"]) >= {"clean", "junk"}
    assert train[-1]["flops"] == result["flops"]  # FLOPs so far, by kind
    assert train[1]["flops"]["learner_score"] == 2 * train[0]["flops"]["learner_score"] > 0
    evals = read_metrics(tmp_path / "metrics.jsonl", "eval")
    assert [e["step"] for e in evals] == [0, 3, 6]
    assert evals[-1]["zero_shot"] == result["final"]["zero_shot"]


def test_phase_times_flow_into_metrics(data, reference_dir, tmp_path):
    """Each step's line holds its time by phase, as the run's clock kept it (result.json's
    timing.per_step), CPU and wall."""
    result = _trainer(data, reference_dir, tmp_path).run(stop_at=3)
    rows = read_metrics(tmp_path / "metrics.jsonl", "train")
    per_step = result["timing"]["per_step"]
    for clock in ("wall", "cpu"):
        for phase in ("data", "learner_score", "select", "forward_backward", "step"):
            assert [r["time"][clock][phase] for r in rows] == per_step[clock][phase]
    assert [r["time"]["wall"].get("checkpoint", 0) > 0 for r in rows] == [False, False, True]


def test_resume_logs_each_step_once(data, reference_dir, tmp_path):
    """A run killed after its step-3 checkpoint, having logged step 4 (and half a line), resumes:
    metrics.jsonl then holds steps 1..6 once each, with the uninterrupted run's losses."""
    straight = _trainer(data, reference_dir, tmp_path / "straight")
    straight.run()
    out = tmp_path / "killed"
    _trainer(data, reference_dir, out).run(stop_at=3)
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    with open(out / "metrics.jsonl", "a") as f:  # what the killed run logged after step 3
        f.write('{"kind": "train", "step": 4, "loss": 1.0}\n{"kind": "train", "st')
    resumed = _trainer(data, reference_dir, out)
    assert resumed.resume() and resumed.step == 3
    resumed.run()
    rows = read_metrics(out / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == list(range(1, 7))
    expected = read_metrics(tmp_path / "straight" / "metrics.jsonl", "train")
    assert [r["loss"] for r in rows] == [r["loss"] for r in expected]
    assert [e["step"] for e in read_metrics(out / "metrics.jsonl", "eval")] == [0, 3, 6]


def test_tensorboard_files_read_back(data, reference_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _trainer(data, reference_dir, tmp_path, report_to=("jsonl", "tensorboard"))
    result = trainer.run()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/data_wait", "train/flops/train",
            "eval/zero_shot"} <= set(tags)  # fmt: skip
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 7))
    assert [e.value for e in loss] == pytest.approx(result["losses"], rel=1e-6)
    assert [e.step for e in events.Scalars("eval/zero_shot")] == [0, 3, 6]


def test_wandb_offline(data, reference_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = _trainer(data, reference_dir, tmp_path, report_to=("wandb",))
    trainer.run(stop_at=2)
    [run] = list((tmp_path / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "wandb" / "jestkit-run-id").read_text().strip()
    assert run.name.endswith(run_id)
    [log] = list(run.glob("*.wandb"))
    assert log.stat().st_size > 0
    assert not (tmp_path / "metrics.jsonl").exists()  # only what report_to names
    # a resumed run continues the same W&B run
    resumed = _trainer(data, reference_dir, tmp_path, report_to=("wandb",))
    assert resumed.resume()
    resumed.run(stop_at=4)
    assert (tmp_path / "wandb" / "jestkit-run-id").read_text().strip() == run_id


def test_report_to_is_checked():
    assert parse_report_to("jsonl, tensorboard") == ("jsonl", "tensorboard")
    assert parse_report_to("none") == ()
    with pytest.raises(ValueError, match="--report_to 'csv': choose among jsonl, tensorboard"):
        parse_report_to("jsonl,csv")


def test_numbered_checkpoints_keep_the_last_k_and_resume(data, reference_dir, tmp_path):
    training = replace(TINY.training, checkpoint_every=1, save_every=2, keep_checkpoints=2)
    config = replace(TINY, training=training)
    straight = _trainer(data, reference_dir, tmp_path / "straight", config)
    straight.run()
    kept = numbered_checkpoints(tmp_path / "straight")
    assert [p.name for p in kept] == ["step_4.pt", "step_6.pt"]  # step_2.pt deleted
    # resuming from a numbered checkpoint continues exactly, as from checkpoint.pt
    resumed = _trainer(data, reference_dir, tmp_path / "straight", config)
    assert resumed.resume(kept[0]) and resumed.step == 4
    resumed.run()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)
    # how many are kept may change on resume; what is trained may not
    other = _trainer(data, reference_dir, tmp_path / "straight",
                     replace(config, training=replace(training, keep_checkpoints=None)))
    assert other.resume(kept[0])


def test_numbered_checkpoint_settings_are_checked():
    with pytest.raises(ValueError, match="save_every=3 must be a multiple of checkpoint_every=2"):
        TrainingConfig(checkpoint_every=2, save_every=3)
    with pytest.raises(ValueError, match="keep_checkpoints needs save_every"):
        TrainingConfig(keep_checkpoints=2)
    with pytest.raises(ValueError, match="keep_checkpoints must be a positive int"):
        TrainingConfig(save_every=100, keep_checkpoints=0)


def test_jsonl_lines_are_json(data, reference_dir, tmp_path):
    _trainer(data, reference_dir, tmp_path).run(stop_at=1)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["eval", "train"]
