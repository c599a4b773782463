"""The training loop: exact resume, and selection that avoids the noisy captions."""

from dataclasses import replace

import pytest
import torch
from helpers import MODEL, TINY

from jestkit.engine.config import TrainConfig
from jestkit.engine.loop import Trainer
from jestkit.fashion.captions import JUNK, MISMATCHED
from jestkit.fashion.evaluate import evaluator
from jestkit.fashion.reference import load_reference
from jestkit.models.factory import build_model


def test_resume_reproduces_the_uninterrupted_run(data, reference_dir, tmp_path):
    def trainer(out):
        torch.manual_seed(0)
        model = build_model(MODEL, len(data.vocab), "sigmoid")
        ref = load_reference(reference_dir, data, "sigmoid")
        return Trainer(model, TINY, data.pool_source(), ref, evaluator(data), out, progress=False)

    straight = trainer(tmp_path / "straight")
    straight.run()
    interrupted = trainer(tmp_path / "resumed")
    interrupted.run(stop_at=3)
    resumed = trainer(tmp_path / "resumed")
    assert resumed.resume() and resumed.step == 3
    resumed.run()
    assert len(resumed.selected_ids) == 6
    for a, b in zip(straight.selected_ids, resumed.selected_ids, strict=True):
        assert torch.equal(a, b)
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert straight.history == resumed.history
    # a different config is refused rather than mixed in
    other = Trainer(
        build_model(MODEL, len(data.vocab), "sigmoid"),
        replace(TINY, training=replace(TINY.training, lr=1.0)),
        data.pool_source(),
        load_reference(reference_dir, data, "sigmoid"),
        None,
        tmp_path / "resumed",
        progress=False,
    )
    with pytest.raises(ValueError, match="lr=1.0"):
        other.resume()


def test_learnability_selects_less_noise_than_the_pool(data, reference_dir):
    config = TrainConfig(
        selection=replace(TINY.selection, temperature=0.0),
        training=replace(TINY.training, steps=12, eval_every=12, batch_size=32),
    )
    torch.manual_seed(0)
    model = build_model(MODEL, len(data.vocab), "sigmoid")
    trainer = Trainer(
        model,
        config,
        data.pool_source(),
        load_reference(reference_dir, data, "sigmoid"),
        progress=False,
    )
    trainer.run()
    pool_noisy = ((data.pool.noise == MISMATCHED) | (data.pool.noise == JUNK)).float().mean()
    sel = trainer.stats.fractions("noise")
    selected_noisy = sel["mismatched"] + sel["junk"]
    assert float(pool_noisy) == pytest.approx(0.40, abs=0.02)
    assert selected_noisy < 0.6 * float(pool_noisy), (selected_noisy, float(pool_noisy))
