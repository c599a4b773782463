"""benchmarks/frontier.py's new run kinds (issue 20): the offline filter, filter + JEST and
easy-reference runs are cached as JSON under their own keys and read back, a second pass runs
nothing, and the payoff summary's cost columns add up."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import MODEL

from jestkit.engine.config import TrainConfig, TrainingConfig
from jestkit.fashion.captions import PoolConfig

ROOT = Path(__file__).parents[2]


@pytest.fixture
def frontier(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("frontier", ROOT / "benchmarks" / "frontier.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "frontier", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RUNS", tmp_path / "results")
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    pool = PoolConfig(limit=1500, curated_size=400, mismatched_rate=0.5, junk_rate=0.3,
                      duplicate_rate=0.05)  # fmt: skip
    monkeypatch.setattr(module, "POOLS", {"tiny": pool})
    monkeypatch.setattr(module, "REFERENCES", {"default": {"steps": 3, "batch_size": 32}})
    monkeypatch.setattr(module, "ModelConfig", lambda: MODEL)  # the tests' tiny towers
    monkeypatch.setattr(module, "TrainConfig",
                        lambda: TrainConfig(training=TrainingConfig(batch_size=32)))  # fmt: skip
    Run = module.Run
    monkeypatch.setitem(module.PLANS, "tiny", [
        [module.ref_task("tiny")],
        [],
        [Run("tiny", "uniform", 3, lr=1e-3, keep=0.3),  # the offline filter
         Run("tiny", "jest", 3, 0.5, lr=1e-3, keep=0.3),  # filter + JEST
         Run("tiny", "easy", 3, 0.7, lr=1e-3),  # easy-reference
         Run("tiny", "uniform", 3, lr=1e-3)],  # uniform on the raw pool
    ])  # fmt: skip
    (tmp_path / "results").mkdir()
    return module


def test_new_run_kinds_are_cached_read_back_and_costed(frontier, tmp_path, monkeypatch):
    args = argparse.Namespace(work=str(tmp_path / "work"), limit=None)
    frontier.work("tiny", 0, 0, args)
    frontier.work("tiny", 2, 0, args)
    results = frontier.load_results()
    keys = {r.key() for r in frontier.PLANS["tiny"][0] + frontier.PLANS["tiny"][2]}
    assert set(results) == keys
    assert "tiny_default_-_uniform_3_lr0.001_s0_keep0.3" in keys  # keep is in the key
    assert "tiny_default_-_uniform_3_lr0.001_s0" in keys  # the raw pool's key as before
    # the filter trains on the kept 30 % only; the reference's cache covers the whole pool
    data = frontier.Worker(Path(args.work), None).pool_data("tiny")
    filtered = results["tiny_default_-_uniform_3_lr0.001_s0_keep0.3"]
    assert filtered["kept"] == round(0.3 * len(data.pool))
    assert results["tiny_default_-_uniform_3_lr0.001_s0"]["kept"] is None
    assert filtered["run"]["keep"] == 0.3
    # a second pass finds every run cached and runs nothing
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").glob("*.json")}
    frontier.work("tiny", 2, 0, args)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "results").glob("*.json")} == stamps

    # the payoff summary: the cost columns add up, the reference is charged where it is used
    # (the probes' grids are not run: report every run at its own rate)
    monkeypatch.setattr(frontier, "reported_lr", lambda run, results: (run.lr, True))
    pools = frontier.payoff(results)
    methods = pools["tiny"]["methods"]
    assert set(methods) == {"uniform", "filter 30 %", "filter 30 % + jest f=0.5", "easy f=0.7"}
    ref = json.loads((tmp_path / "results" / "reference_tiny_default.json").read_text())
    ref_tflops = (ref["train_flops"] + ref["cache_flops"]) / 1e12
    for name, m in methods.items():
        (point,) = m["points"]
        assert point["total"] == pytest.approx(point["train"] + point["learner_score"]
                                               + point["reference"])  # fmt: skip
        assert point["reference"] == pytest.approx(0.0 if name == "uniform" else ref_tflops)
        assert (point["learner_score"] > 0) == ("jest" in name)
    text = frontier.payoff_table(pools)
    assert "filter 30 % + jest f=0.5" in text and "total TFLOPs to reach" in text



def test_every_benchmark_pool_is_valid_and_counts_only_detailed_captions_as_clean(monkeypatch):
    """The benchmark's pools validate, and a vague caption, though correct, does not count in
    the clean share the tables print."""
    spec = importlib.util.spec_from_file_location("frontier", ROOT / "benchmarks" / "frontier.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "frontier", module)
    spec.loader.exec_module(module)
    for name, pool in module.POOLS.items():
        pool.validate()
        assert 0 < module.clean_share(pool) < 1, name
    assert module.clean_share(module.POOLS["vague"]) == pytest.approx(0.15)
    assert module.POOLS["longtail"].class_zipf > 0 and module.POOLS["vague"].vague_rate > 0
