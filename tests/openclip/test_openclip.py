"""jestkit.openclip on tiny open_clip configs (random weights, nothing downloaded):
open_clip's losses equal jestkit's, the reference loads frozen from a checkpoint, and JESTTask
trains with the selection jestkit.select makes on the same embeddings."""

from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
from docs_pages import blocks, page
from dropin.test_distributed import spawn, values_of
from helpers import batch_score
from open_clip.loss import ClipLoss, SigLipLoss

from jestkit import Embeddings, SelectionConfig, Selector, select
from jestkit.core import Weighted, gain_state
from jestkit.core.losses import contrastive_loss
from jestkit.dropin.cache import ReferenceCache, build_cache
from jestkit.dropin.distributed import Distributed, GlobalSelector, wrap_model
from jestkit.openclip import (
    CachedEmbeddings,
    JESTTask,
    create_model,
    embeddings,
    freeze,
    load_reference,
    make_loss,
    reference_cache_meta,
    selection_loss,
)

# A ViT of width 64 with 2 layers on 8x8 patches of 32x32 images, a 2-layer text tower. The
# names avoid "siglip", which would pick a tokenizer from the Hugging Face hub.
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_SIG = {**TINY, "init_logit_scale": math.log(10.0), "init_logit_bias": -10.0}
SIG, CLIP = "jest-tiny-sig", "jest-tiny-clip"


@pytest.fixture(scope="module", autouse=True)
def tiny_configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{SIG}.json").write_text(json.dumps(TINY_SIG))
    (folder / f"{CLIP}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(folder)
    return folder


def make_model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None, output_dict=True)


def super_batch(n: int, seed: int):
    """n random 32x32 images and n distinct captions, tokenized by open_clip's own tokenizer."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    words = ["red", "small", "shirt", "boot", "bag", "dress", "coat", "wide", "dark", "tall"]
    captions = [f"a photo of a {words[i % 10]} {words[(i // 10) % 10]} item {i}" for i in range(n)]
    texts = open_clip.get_tokenizer(SIG)(captions)
    return images, texts


# ----------------------------------------------------------------------------- the losses


def core_batch_score(loss: str, e: Embeddings) -> float:
    """The core's batch score of the whole batch, s(S) = sum of the marginal gains g(k | C) as
    the joint sampler computes them, adding the examples one at a time."""
    state = gain_state(loss, [Weighted(e, 1.0)])
    total = 0.0
    for k in range(len(e)):
        total += float(state.gains()[k])
        state.add(torch.tensor([k]))
    return total


@pytest.mark.parametrize("name,loss", [(SIG, "sigmoid"), (CLIP, "softmax")])
def test_open_clip_losses_equal_jestkit_losses(name, loss):
    model = make_model(name, seed=0)
    assert selection_loss(model) == loss
    images, texts = super_batch(24, seed=1)
    with torch.no_grad():
        out = model(images, texts)
    e = embeddings(out)
    n = len(e)
    oc_loss = make_loss(model)
    assert isinstance(oc_loss, SigLipLoss if loss == "sigmoid" else ClipLoss)
    with torch.no_grad():
        theirs = float(oc_loss(**out))
        ours = float(contrastive_loss(loss, e.image, e.text, e.logit_scale, e.logit_bias))
    assert ours == pytest.approx(theirs, rel=1e-6)
    # the core scores the same pair losses summed: n x SigLipLoss, 2n x ClipLoss
    factor = n if loss == "sigmoid" else 2 * n
    scale, bias = (float(torch.as_tensor(x).detach()) for x in (e.logit_scale, e.logit_bias))
    e64 = Embeddings(e.image.double(), e.text.double(), scale, bias)
    oc64 = float(oc_loss(e64.image, e64.text, e64.logit_scale, e64.logit_bias))
    assert core_batch_score(loss, e64) == pytest.approx(factor * oc64, rel=1e-9)
    assert batch_score(loss, [(e64, 1.0)], list(range(n))) == pytest.approx(factor * oc64, rel=1e-9)


def test_embeddings_of_tuple_and_dict_outputs_agree():
    model = make_model(SIG, seed=0)
    images, texts = super_batch(4, seed=1)
    with torch.no_grad():
        as_dict = embeddings(model(images, texts))
        model.output_dict = False
        as_tuple = embeddings(model(images, texts))
    for a, b in zip(as_dict.__dict__.values(), as_tuple.__dict__.values(), strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    assert float(as_dict.logit_scale) == pytest.approx(10.0)  # exp(log 10): the multiplier
    assert float(as_dict.logit_bias.detach()) == -10.0
    clip = make_model(CLIP, seed=0)
    with torch.no_grad():
        assert embeddings(clip(images, texts)).logit_bias == 0.0  # CLIP: no bias
        with pytest.raises(ValueError, match="text_features"):
            embeddings(clip(images, None))
    with pytest.raises(TypeError, match="open_clip model's output"):
        embeddings(torch.zeros(3))


# ----------------------------------------------------------------------------- the reference


def test_reference_loads_frozen_from_a_checkpoint(tmp_path):
    trained = make_model(SIG, seed=5)
    ckpt = tmp_path / "epoch_1.pt"  # open_clip_train's layout, DDP prefix included
    torch.save(
        {
            "epoch": 1,
            "name": "ref",
            "state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()},
        },
        ckpt,
    )
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(TINY_SIG))
    for source in (SIG, config_file, str(config_file), TINY_SIG, {"model_cfg": TINY_SIG}):
        ref = load_reference(source, ckpt)
        assert not ref.training
        assert all(not p.requires_grad for p in ref.parameters())
        for k, v in trained.state_dict().items():
            assert torch.equal(ref.state_dict()[k], v), (source, k)
    learner = create_model(TINY_SIG, ckpt)  # the same weights, trainable
    assert learner.training and all(p.requires_grad for p in learner.parameters())
    assert torch.equal(learner.logit_bias, trained.logit_bias)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_reference(SIG, tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="no open_clip model config"):
        load_reference(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="lacks"):
        load_reference({"embed_dim": 8})


# ----------------------------------------------------------------------------- the task


def oracle_embeddings(model, images, texts):
    with torch.no_grad():
        return embeddings(model(images, texts))


@pytest.mark.parametrize("name,loss", [(SIG, "sigmoid"), (CLIP, "softmax")])
def test_task_trains_two_steps_on_the_selection_jestkit_makes(name, loss, tmp_path):
    learner = make_model(name, seed=0)
    trained_ref = make_model(name, seed=1)
    ckpt = tmp_path / "ref.pt"
    torch.save({"state_dict": trained_ref.state_dict()}, ckpt)
    reference = load_reference(name, ckpt)
    ref_before = {k: v.clone() for k, v in reference.state_dict().items()}
    config = SelectionConfig(loss=loss, filter_ratio=0.8, n_chunks=4)
    task = JESTTask(learner, reference, Selector(config, seed=7))
    task.train()
    assert task.trainable_module.training and not task.reference.training
    opt = torch.optim.AdamW(learner.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    oracle_gen = torch.Generator().manual_seed(7)

    for step in range(2):
        images, texts = super_batch(40, seed=10 + step)
        l_emb = oracle_embeddings(learner, images, texts)
        r_emb = oracle_embeddings(trained_ref, images, texts)
        expected = select(l_emb, r_emb, config, generator=oracle_gen)

        out = task(images, texts)
        assert torch.equal(out.selected, expected)
        assert out.selected.shape == (8,)  # b = 0.2 * 40
        assert all(v.dim() == 0 for v in out.values())  # open_clip_train logs v.item()
        # the loss is open_clip's loss of the learner on the selected pairs
        with torch.no_grad():
            sub = learner(images[expected], texts[expected])
            want = (SigLipLoss() if loss == "sigmoid" else ClipLoss())(**sub)
        assert float(out["loss"].detach()) == pytest.approx(float(want), rel=1e-5)
        opt.zero_grad()
        out["loss"].backward()
        assert all(p.grad is None for p in reference.parameters())
        opt.step()

    changed = [k for k, v in learner.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2, changed
    assert all(torch.equal(v, ref_before[k]) for k, v in reference.state_dict().items())
    assert all(not p.requires_grad for p in reference.parameters())

    task.eval()  # evaluation: the task answers like the learner
    images, texts = super_batch(5, seed=3)
    with torch.no_grad():
        assert torch.equal(
            task(images, texts)["image_features"], learner(images, texts)["image_features"]
        )


def test_cached_reference_selects_as_the_live_one(tmp_path):
    reference = load_reference(SIG, None)
    images, texts = super_batch(40, seed=4)
    ids = torch.arange(1000, 1040)
    meta = reference_cache_meta(reference, ids, "tokenizer: open_clip simple")

    def compute(batch_ids):
        rows = batch_ids - 1000
        with torch.no_grad():
            e = embeddings(reference(images[rows], texts[rows]))
        return {"image": e.image, "text": e.text}

    build_cache(tmp_path / "cache", ids, compute, meta, batch_size=16, progress=False)
    cache = ReferenceCache.open(tmp_path / "cache", meta.model_fingerprint, meta.data_fingerprint)
    cached = CachedEmbeddings.of(cache, reference)
    config = SelectionConfig(loss="sigmoid", filter_ratio=0.75, n_chunks=2)
    learner = make_model(SIG, seed=0)
    live = JESTTask(learner, reference, Selector(config, seed=3))
    from_cache = JESTTask(learner, cached, Selector(config, seed=3))
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    want = live.select(images[perm], texts[perm])
    assert torch.equal(from_cache.select(images[perm], texts[perm], ids[perm]), want)
    with pytest.raises(ValueError, match="task\\(images, texts, ids\\)"):
        from_cache.select(images, texts)
    with pytest.raises(KeyError, match="not in the reference cache"):
        from_cache.select(images[:4], texts[:4], torch.tensor([1, 2, 3, 4]))


def test_task_refuses_mismatched_losses_and_models():
    sig, clip = make_model(SIG, 0), make_model(CLIP, 0)
    softmax = Selector(SelectionConfig(loss="softmax"), seed=0)
    sigmoid = Selector(SelectionConfig(loss="sigmoid"), seed=0)
    with pytest.raises(ValueError, match="use SelectionConfig\\(loss='sigmoid'\\)"):
        JESTTask(sig, load_reference(SIG), softmax)
    with pytest.raises(ValueError, match="needs a logit_bias"):
        JESTTask(clip, load_reference(SIG), sigmoid, loss=SigLipLoss())
    with pytest.raises(ValueError, match="contrastive"):
        JESTTask(sig, None, Selector(SelectionConfig(loss="per_example"), seed=0))
    with pytest.raises(ValueError, match="needs a reference"):
        JESTTask(sig, None, sigmoid)
    with pytest.raises(TypeError, match="selector"):
        JESTTask(sig, None, SelectionConfig())
    task = JESTTask(sig, load_reference(SIG), sigmoid)
    images, texts = super_batch(10, seed=0)
    with pytest.raises(ValueError, match="differ in size"):
        task(images, texts[:9])


def test_uniform_and_hard_learner_policies_need_no_reference():
    learner = make_model(SIG, 0)
    images, texts = super_batch(20, seed=0)
    for policy in ("uniform", "hard_learner"):
        config = SelectionConfig(policy=policy, n_chunks=2)
        task = JESTTask(learner, None, Selector(config, seed=1))
        expected = select(
            oracle_embeddings(learner, images, texts),
            None,
            config,
            generator=torch.Generator().manual_seed(1),
            batch_size=20,
        )
        out = task(images, texts)
        assert torch.equal(out.selected, expected)


# ----------------------------------------------------------------------------- torchrun


def _task_on_ranks(ctx, config_dir):
    """One JEST step on this rank's shard of a 40-pair super-batch, the learner in DDP."""
    open_clip.add_model_config(config_dir)  # a spawned process: register the tiny configs
    learner = wrap_model(make_model(SIG, seed=0), ctx)
    reference = freeze(make_model(SIG, seed=1))
    selector = GlobalSelector(SelectionConfig(n_chunks=4), seed=7, group=ctx.group)
    task = JESTTask(learner, reference, selector)
    images, texts = super_batch(40, seed=10)
    n = 40 // ctx.world_size
    rows = slice(ctx.rank * n, (ctx.rank + 1) * n)
    out = task(images[rows], texts[rows])
    out["loss"].backward()
    return out.selected, float(out["loss"].detach())


def test_task_under_torchrun_selects_and_trains_as_one_process(tiny_configs, tmp_path):
    per_rank = values_of(spawn(_task_on_ranks, 2, tmp_path, tiny_configs, deadline_s=120.0))
    want_selected, want_loss = _task_on_ranks(Distributed(), tiny_configs)
    for selected, _ in per_rank:
        assert torch.equal(selected, want_selected)
    # each rank's SigLipLoss covers its b / 2 images against all b texts, divided by b / 2;
    # DDP averages the ranks' gradients: the mean of the ranks' losses is the global loss
    mean = sum(loss for _, loss in per_rank) / len(per_rank)
    assert mean == pytest.approx(want_loss, rel=1e-5)


# ------------------------------------------------------------------------------- the manual


def readme_open_clip_blocks() -> list[str]:
    """The ```py blocks of the open_clip and Flexi-JEST pages that say they run here."""
    return [b for name in ("openclip.md", "flexi.md")
            for b in blocks(page(name), "py", runs_as_written=True)]  # fmt: skip


def test_readme_open_clip_recipes_run():
    blocks = readme_open_clip_blocks()
    assert blocks, "the open_clip pages have no runnable block"
    namespace = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, "docs/openclip.md", "exec"), namespace)
