"""`jestkit train` and `jestkit score` with an open_clip model (a tiny config given as a JSON
file, random weights, nothing downloaded) on shards the tests write: a reference checkpoint
scored in the loop selects what its cache selects, the cache build resumes, the DataComp subset
is the brute-force top of the reference's image-text similarities, and bad choices are errors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import MODEL, TINY
from shard_files import TINY_SIG, write_shards

from jestkit.cli import main as cli_main
from jestkit.data.stream import ShardsConfig
from jestkit.dropin.cache import CacheError, load_datacomp_subset
from jestkit.engine.checkpoint import load_checkpoint
from jestkit.openclip import create_model
from jestkit.openclip.dual import open_clip_inputs
from jestkit.own.run import OwnModel, OwnRun
from jestkit.own.score import export_subset, score_shards
from jestkit.own.train import train_own

JOINT = TINY.with_name("learnability-joint")  # b = 16, B = 80, 4 chunks, 6 steps


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_openclip")
    config = root / "tiny-sig.json"
    config.write_text(json.dumps(TINY_SIG))
    torch.manual_seed(7)
    reference = create_model(config)
    torch.save({"state_dict": reference.state_dict()}, root / "reference.pt")
    pattern = write_shards(root / "shards", shards=2, per_shard=100)
    return {"root": root, "config": str(config), "reference": str(root / "reference.pt"),
            "pattern": pattern}  # fmt: skip


def _run(files, reference=None):
    shards = ShardsConfig(pattern=files["pattern"], buffer_size=50)
    return OwnRun(shards, OwnModel(files["config"], reference or files["reference"]))


def _selected(run_dir):
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return state["stats"]["selected_ids"]


def test_cached_reference_selects_what_the_checkpoint_selects(files, tmp_path):
    """The reference checkpoint run in the loop, and its cache built by score_shards: the same
    selections and losses (the cache holds the same embeddings); only the FLOPs differ."""
    live = train_own(_run(files), MODEL, JOINT, tmp_path / "live", progress=False)
    info = score_shards(_run(files), MODEL, "sigmoid", tmp_path / "ref", batch_size=32,
                        progress=False)  # fmt: skip
    assert info["samples"] == 200 and info["skipped"] == {}
    cached = train_own(_run(files, str(tmp_path / "ref")), MODEL, JOINT, tmp_path / "cached",
                       progress=False)  # fmt: skip
    assert _selected(tmp_path / "live") == _selected(tmp_path / "cached")
    torch.testing.assert_close(torch.tensor(live["losses"]), torch.tensor(cached["losses"]))
    assert live["flops"]["reference_score"] > 0 and cached["flops"]["reference_score"] == 0
    assert live["flops"]["learner_score"] == cached["flops"]["learner_score"] > 0
    assert live["model"] == files["config"] and live["final"] == {}  # no evaluation on shards


def _reference_embeddings(files):
    """Every sample's reference embeddings, computed directly: the independent answer."""
    from jestkit.data.shards import ShardPool
    from jestkit.openclip.dual import open_clip_model

    model = open_clip_model(files["config"], files["reference"]).eval()
    transform, tokenize = open_clip_inputs(files["config"], model)
    samples = list(ShardPool(files["pattern"], buffer_size=0, transform=transform))
    with torch.no_grad():
        emb = model.embeddings(torch.stack([s["image"] for s in samples]),
                               tokenize([s["caption"] for s in samples]))  # fmt: skip
    return [s["id"] for s in samples], emb


def test_score_resumes_and_exports_the_top_uids(files, tmp_path):
    out = tmp_path / "ref"
    score_shards(_run(files), MODEL, "sigmoid", out, batch_size=16, progress=False,
                 rows_per_part=64)  # fmt: skip
    ids, emb = _reference_embeddings(files)
    from jestkit.dropin.cache import ReferenceCache

    info = json.loads((out / "reference.json").read_text())
    cache = ReferenceCache.open(out / "cache", info["model_fingerprint"], info["data_fingerprint"])
    torch.testing.assert_close(cache.lookup(ids, ["image"])["image"], emb.image)
    # a build killed after two of its four parts: rebuilt from the parts that are left
    (out / "cache" / "manifest.json").unlink()
    parts = sorted((out / "cache").glob("part-*.parquet"))
    assert len(parts) == 4
    for part in parts[2:]:
        part.unlink()
    score_shards(_run(files), MODEL, "sigmoid", out, batch_size=16, progress=False,
                 rows_per_part=64)  # fmt: skip
    cache = ReferenceCache.open(out / "cache", info["model_fingerprint"], info["data_fingerprint"])
    torch.testing.assert_close(cache.lookup(ids, ["text"])["text"], emb.text)
    # the DataComp subset: the quarter of uids with the highest image-text cosine similarity
    sub = export_subset(out, 0.25, tmp_path / "subset.npy")
    similarity = (emb.image * emb.text).sum(1) / (emb.image.norm(dim=1) * emb.text.norm(dim=1))
    top = sorted(ids[i] for i in similarity.argsort(descending=True)[:50].tolist())
    kept = load_datacomp_subset(tmp_path / "subset.npy")
    assert sub["kept"] == 50 and len(kept) == 50
    assert [f"{int(a):016x}{int(b):016x}" for a, b in kept.tolist()] == top


def test_other_shards_and_bad_choices_are_refused(files, tmp_path, capsys):
    score_shards(_run(files), MODEL, "sigmoid", tmp_path / "ref", progress=False)
    other = write_shards(tmp_path / "other", shards=2, per_shard=90)
    run = OwnRun(ShardsConfig(pattern=other), OwnModel(files["config"], str(tmp_path / "ref")))
    with pytest.raises(CacheError, match="built for other shards"):
        train_own(run, MODEL, JOINT, tmp_path / "x", progress=False)
    softmax = replace(JOINT, selection=replace(JOINT.selection, loss="softmax"))
    with pytest.raises(ValueError, match="--selection.loss sigmoid"):
        train_own(_run(files), MODEL, softmax, tmp_path / "y", progress=False)
    code = cli_main(["train", "--open_clip", files["config"], "--quiet", "--out", str(tmp_path)])
    assert code == 2 and "trains on image-caption shards" in capsys.readouterr().err
