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
from jestkit.fashion.reference import load_reference, train_reference
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
