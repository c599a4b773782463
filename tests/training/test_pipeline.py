"""The image-caption job end to end on a small slice of the real Fashion-MNIST files."""

import json
import shutil
from dataclasses import replace

import pytest
import torch

from jestkit import SelectionConfig
from jestkit.cli import main as cli_main
from jestkit.data.captions import JUNK, MISMATCHED, PoolConfig
from jestkit.data.prepare import prepare_caption_data
from jestkit.dropin.cache import CacheError
from jestkit.models.factory import ModelConfig, build_model
from jestkit.training.config import TrainConfig, TrainingConfig
from jestkit.training.demo import run_demo
from jestkit.training.evaluate import evaluator
from jestkit.training.learner import train_learner
from jestkit.training.loop import Trainer
from jestkit.training.reference import load_reference, train_reference

LIMIT = 1500
POOL = PoolConfig(curated_size=400, limit=LIMIT)
MODEL = ModelConfig(dim=32, depth=1, text_depth=1, heads=2, embed_dim=32)
TINY = TrainConfig(
    selection=SelectionConfig(n_chunks=4),
    training=TrainingConfig(batch_size=16, steps=6, eval_every=3, checkpoint_every=3),
)


@pytest.fixture(scope="module")
def data():
    return prepare_caption_data(POOL)


@pytest.fixture(scope="module")
def reference_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    train_reference(
        data,
        MODEL,
        TrainingConfig(steps=80, batch_size=64, eval_every=None),
        "sigmoid",
        out,
        progress=False,
    )
    return out


def test_reference_folder_and_cache_round_trip(data, reference_dir):
    info = json.loads((reference_dir / "reference.json").read_text())
    assert info["train_flops"] > 0 and info["cache_flops"] > 0
    assert info["data_fingerprint"] == data.fingerprint
    ref = load_reference(reference_dir, data, "sigmoid")
    # the cache holds what the saved reference computes, keyed by id
    state = torch.load(reference_dir / "model.pt", weights_only=False)
    model = build_model(MODEL, len(data.vocab), "sigmoid")
    model.load_state_dict(state["model"])
    model.eval()
    rows = torch.tensor([5, 0, 17, len(data.pool) - 1])
    out = ref(data.pool.ids[rows])
    img, txt = model(data.pool.images[rows].unsqueeze(1).float() / 255, data.pool_tokens[rows])
    assert torch.allclose(out.image, img, atol=1e-5) and torch.allclose(out.text, txt, atol=1e-5)
    assert out.logit_scale == pytest.approx(model.logit_scale.item())


def test_stale_cache_is_refused(data, reference_dir, tmp_path):
    # other data: a different pool seed changes the pool's fingerprint
    other = prepare_caption_data(replace(POOL, seed=1))
    with pytest.raises(CacheError, match="data"):
        load_reference(reference_dir, other, "sigmoid")
    # another reference: retrain with another seed, then put the old cache beside it
    other_ref = tmp_path / "other"
    train_reference(
        data,
        MODEL,
        TrainingConfig(steps=2, batch_size=16, seed=5, eval_every=None),
        "sigmoid",
        other_ref,
        progress=False,
    )
    shutil.rmtree(other_ref / "cache")
    shutil.copytree(reference_dir / "cache", other_ref / "cache")
    with pytest.raises(CacheError, match="model"):
        load_reference(other_ref, data, "sigmoid")
    with pytest.raises(CacheError, match="loss"):
        load_reference(reference_dir, data, "softmax")
    with pytest.raises(CacheError, match="jestkit reference"):
        load_reference(tmp_path / "missing", data, "sigmoid")


@pytest.mark.parametrize(
    "policy",
    [
        "learnability-joint",
        "flexi-learnability-independent",
        "hard_learner-joint",
        "easy_reference-independent",
    ],
)
def test_every_stage_runs(data, reference_dir, tmp_path, policy):
    config = TINY.with_name(policy)
    result = train_learner(data, MODEL, config, reference_dir, tmp_path, progress=False)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["steps"] == 6 and saved["policy"] == config.name()
    assert [h["step"] for h in saved["history"]] == [0, 3, 6]
    assert set(result["final"]) == {"zero_shot", "i2t_r1", "t2i_r1"}
    flops = result["flops"]
    assert flops["train"] > 0 and flops["reference_score"] == 0
    assert (flops["learner_score"] > 0) == (not policy.startswith("easy_reference"))


def test_flexi_scoring_is_cheaper(data, reference_dir, tmp_path):
    full = train_learner(data, MODEL, TINY, reference_dir, tmp_path / "a", progress=False)
    flexi = TINY.with_name("flexi-learnability-joint")
    cheap = train_learner(data, MODEL, flexi, reference_dir, tmp_path / "b", progress=False)
    ratio = cheap["flops_per_step"]["learner_score"] / full["flops_per_step"]["learner_score"]
    # the image tower at patch 14 sees 4 tokens instead of 16; the text tower costs the same
    assert ratio < 0.75, ratio


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


def test_demo_writes_results_and_curves(tmp_path):
    results = run_demo(
        tmp_path,
        POOL,
        MODEL,
        TrainingConfig(steps=10, batch_size=32, eval_every=None),
        TINY,
        policies=("uniform", "learnability-joint"),
        progress=False,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert set(saved["policies"]) == {"uniform", "learnability-joint"}
    keys = {
        "final_zero_shot",
        "final_i2t_r1",
        "final_t2i_r1",
        "steps_to_target",
        "flops_to_target",
        "speedup_steps",
        "speedup_flops",
        "selected_noise_fraction",
    }
    for row in saved["policies"].values():
        assert keys <= set(row)
    assert saved["policies"]["uniform"]["steps_to_target"] is not None
    assert saved["config"]["train"]["training"]["steps"] == 6
    assert results["target_zero_shot"] == saved["policies"]["uniform"]["final_zero_shot"]


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


def test_retrieval_counts_captions_that_fit_the_image(data):
    from jestkit.training.evaluate import attribute_masks, consistent, level_masks

    test = data.test
    cap, img = attribute_masks(test.captions), level_masks(test.levels)
    # every clean test caption fits its own image ...
    assert bool(consistent(cap, test.labels, img, test.labels).all())
    # ... and a caption naming another class, or a wrong attribute word, does not
    other = (test.labels + 1) % 10
    assert not bool(consistent(cap, other, img, test.labels).any())
    names_some = cap > 0
    flipped = img ^ (img & -img)  # drop the image's lowest true word
    wrong = consistent(cap, test.labels, flipped, test.labels)
    assert wrong[names_some].float().mean() < 1.0
