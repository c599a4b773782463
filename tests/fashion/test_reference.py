"""The reference: its folder, its cache by id, and a stale cache refused."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from helpers import MODEL, POOL

from jestkit.data.source import Examples
from jestkit.dropin.cache import CacheError
from jestkit.engine.config import TrainingConfig
from jestkit.fashion.prepare import prepare_caption_data
from jestkit.fashion.reference import filter_pool, load_reference, train_reference
from jestkit.fashion.source import pixels
from jestkit.models.factory import build_model


def test_reference_folder_and_cache_round_trip(data, reference_dir):
    info = json.loads((reference_dir / "reference.json").read_text())
    assert info["train_flops"] > 0 and info["cache_flops"] > 0
    assert info["data_fingerprint"] == data.fingerprint
    ref = load_reference(reference_dir, data, "sigmoid")
    # the cache holds what the saved reference computes, keyed by id
    state = torch.load(reference_dir / "model.pt", weights_only=True)
    model = build_model(MODEL, len(data.vocab), "sigmoid")
    model.load_state_dict(state["model"])
    model.eval()
    rows = torch.tensor([5, 0, 17, len(data.pool) - 1])
    batch = Examples(data.pool.ids[rows], pixels(data.pool.images[rows]), data.pool_tokens[rows])
    out = ref(batch)  # looked up by id
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


def test_filter_keeps_the_brute_force_top_k_of_the_reference_similarities(data, reference_dir):
    # brute force: the saved reference model's own image-caption cosine of every pool pair
    state = torch.load(reference_dir / "model.pt", weights_only=True)
    model = build_model(MODEL, len(data.vocab), "sigmoid")
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        img, txt = model(pixels(data.pool.images), data.pool_tokens)
    cos = [float(u @ v / (u.norm() * v.norm())) for u, v in zip(img, txt, strict=True)]
    for keep in (0.1, 0.3, 0.5):
        filtered = filter_pool(data, reference_dir, keep, "sigmoid")
        n = round(keep * len(data.pool))
        expected = sorted(range(len(cos)), key=lambda i: -cos[i])[:n]
        assert len(filtered.kept) == n
        assert set(filtered.kept.tolist()) == set(expected)
        kept_min = min(cos[i] for i in filtered.kept.tolist())
        dropped_max = max(cos[i] for i in set(range(len(cos))) - set(expected))
        assert kept_min >= dropped_max - 1e-5
        # learners draw only the kept pairs; the reference cache (the whole pool's) still fits
        source = filtered.pool_source()
        assert len(source) == n
        drawn = source.draw(n, torch.Generator().manual_seed(0)).ids
        assert set(drawn.tolist()) == set(data.pool.ids[filtered.kept].tolist())
        assert filtered.fingerprint == data.fingerprint
        assert filtered.kept_fingerprint() != data.kept_fingerprint()
    with pytest.raises(ValueError, match="keep"):
        filter_pool(data, reference_dir, 0.0, "sigmoid")
    # filtering noisy pools keeps clean pairs over junk and mismatched ones
    clean = (data.pool.noise[filter_pool(data, reference_dir, 0.3, "sigmoid").kept] == 0).float()
    assert clean.mean() > (data.pool.noise == 0).float().mean()
