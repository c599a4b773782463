"""Flexi-JEST's scoring views of open_clip models (jestkit.openclip.views), on tiny configs with
random weights: the identity view is the plain forward, the FlexiViT identity holds through the
whole image tower, views are seeded, a caption that fits keeps its embedding, gradients reach
the base weights, and views a model cannot take are refused naming the model and the flag."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from shard_files import TINY_SIG

from jestkit import SelectionConfig, Selector
from jestkit.engine.flops import count_no_grad_flops
from jestkit.models.view import View
from jestkit.openclip import JESTTask, create_model
from jestkit.openclip.dual import OpenClipDual
from jestkit.openclip.views import OpenClipViews, kept_positions

# CustomTextCLIP with a bidirectional text tower pooled at its last position, like open_clip's
# SigLIP configs (whose tokenizers come from the Hugging Face hub).
TINY_CUSTOM = {
    **TINY_SIG,
    "custom_text": True,
    "text_cfg": {**TINY_SIG["text_cfg"], "no_causal_mask": True, "pool_type": "last"},
}
# A CNN image tower (open_clip's ModifiedResNet): no patches
TINY_RESNET = {**TINY_SIG, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8}}
# A timm image tower (a ViT inside timm: its patch embedding is timm's, not reachable)
TINY_TIMM = {**TINY_SIG, "vision_cfg": {"image_size": 32, "timm_model_name": "vit_tiny_patch16_224",
                                         "timm_model_pretrained": False, "timm_pool": "",
                                         "timm_proj": "linear"}}  # fmt: skip


def model(config=TINY_SIG, seed=0) -> OpenClipDual:
    torch.manual_seed(seed)
    return OpenClipDual(create_model(config), "tiny").eval()


def inputs(n=6, length=16, words=6, seed=1):
    """Images, and CLIP-style token rows: SOT, words, EOT (the largest id), pads of 0."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g)
    tokens = torch.zeros(n, length, dtype=torch.long)
    tokens[:, 0] = 49406
    tokens[:, 1 : words + 1] = torch.randint(1, 40000, (n, words), generator=g)
    tokens[:, words + 1] = 49407
    return images, tokens


@torch.no_grad()
def test_identity_view_is_the_plain_forward():
    """The step-by-step forward at the model's own patch size, nothing dropped, equals
    open_clip's own encode_image / encode_text; so does View() through embeddings."""
    for config, kind in ((TINY_SIG, "CLIP"), (TINY_CUSTOM, "CustomTextCLIP")):
        m = model(config)
        assert type(m.model).__name__ == kind
        images, tokens = inputs()
        views, visual = m.views, m.model.visual
        plain_image, plain_text = m.model.encode_image(images), m.model.encode_text(tokens)
        torch.testing.assert_close(views.vision_forward(visual, images), plain_image)
        torch.testing.assert_close(views.vision_forward(visual, images, 8), plain_image)
        # a drop rate that keeps all 16 positions runs the text view's own forward
        torch.testing.assert_close(views.encode_text(tokens, 0.01), plain_text)
        out = m.model(images, tokens)
        emb = m.embeddings(images, tokens, View())
        torch.testing.assert_close(emb.image, out["image_features"])
        torch.testing.assert_close(emb.text, out["text_features"])


@torch.no_grad()
def test_flexivit_identity_through_the_image_tower():
    """An image whose every 8 x 8 patch is resized (bilinear, patch by patch) to 16 x 16, seen at
    patch 16, gives the tokens of the original at patch 8: the PI-resized patch embedding is
    exact for upsampling, and the grid (4 x 4) is the same, so the whole tower's output is too."""
    m = model()
    images, _ = inputs()
    patches = images.unfold(2, 8, 8).unfold(3, 8, 8)  # (n, 3, 4, 4, 8, 8)
    n = len(images)
    up = F.interpolate(patches.reshape(-1, 1, 8, 8), size=(16, 16), mode="bilinear",
                       align_corners=False)  # fmt: skip
    up = up.reshape(n, 3, 4, 4, 16, 16).permute(0, 1, 2, 4, 3, 5).reshape(n, 3, 64, 64)
    visual = m.model.visual
    base_tokens = visual.conv1(images)
    resized = F.conv2d(up, m.views.patches.weight(visual.conv1.weight, 16), stride=16)
    torch.testing.assert_close(resized, base_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.views.vision_forward(visual, up, 16), m.model.encode_image(images),
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    # the test can fail: plainly interpolating the weights instead breaks it
    naive = F.interpolate(visual.conv1.weight, size=(16, 16), mode="bilinear") / 4
    assert (F.conv2d(up, naive, stride=16) - base_tokens).abs().max() > 1e-2


@torch.no_grad()
def test_coarse_view_and_token_drops_are_seeded_and_cheaper():
    m = model()
    images, tokens = inputs(words=12)
    view = View(patch_size=16, token_drop=0.5, text_token_drop=0.5)

    def emb(seed):
        return m.embeddings(images, tokens, view, torch.Generator().manual_seed(seed))

    a, b, c = emb(3), emb(3), emb(4)
    assert torch.equal(a.image, b.image) and torch.equal(a.text, b.text)
    assert not torch.equal(a.image, c.image) and not torch.equal(a.text, c.text)
    assert a.image.shape == (6, 32) and a.logit_scale == pytest.approx(10.0)
    images, tokens = inputs(n=48, words=12)  # the patch embedding's resize is once per batch
    _, full = count_no_grad_flops(m.embeddings, images, tokens)
    _, coarse = count_no_grad_flops(m.embeddings, images, tokens, View(16, 0, 0.5))
    assert coarse < 0.45 * full  # measured: 0.437 (tests/engine/test_flops.py: closed form)


@torch.no_grad()
def test_a_caption_that_fits_keeps_its_embedding():
    """Under the causal mask, positions after the EOT token cannot reach it: with 8 of 16
    positions kept, a caption of SOT + 6 words + EOT loses only pads, and its features are
    exactly the plain ones; a longer caption keeps SOT and EOT and a random share of its words."""
    m = model()
    _, tokens = inputs(words=6)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(m.views.encode_text(tokens, 0.5, g), m.model.encode_text(tokens))
    _, long = inputs(words=13)
    eot = long.argmax(dim=1)
    kept = kept_positions(long, eot, 8, causal=True, pad_id=0, generator=g)
    assert kept.shape == (6, 8) and (kept[:, 0] == 0).all() and (kept[:, -1] == eot).all()
    assert (kept.diff(dim=1) > 0).all()  # in order
    assert not torch.allclose(m.views.encode_text(long, 0.5, g), m.model.encode_text(long))


def test_multires_gradients_reach_the_base_weights():
    m = model().train()
    images, tokens = inputs()
    img = m.encode_image_multires(images, patch_size=16, fraction_coarse=0.5)
    with torch.no_grad():
        torch.testing.assert_close(img[:3], m.encode_image(images[:3], patch_size=16))
        torch.testing.assert_close(img[3:], m.encode_image(images[3:]))
    m.loss(img, m.encode_text(tokens)).backward()
    conv = m.model.visual.conv1.weight.grad
    assert conv is not None and conv.abs().sum() > 0


def test_views_a_model_cannot_take_are_refused():
    m = model()
    with pytest.raises(ValueError, match=r"--scoring.patch_size 12 does not divide tiny's image"):
        m.check_view(View(patch_size=12))
    m.check_view(View(patch_size=16, token_drop=0.5, text_token_drop=0.5), 0.5)  # fine
    resnet = model(TINY_RESNET)
    with pytest.raises(ValueError, match=r"--scoring.patch_size: tiny's image tower is a Modif"):
        resnet.check_view(View(patch_size=16))
    with pytest.raises(ValueError, match="--scoring.token_drop"):
        resnet.check_view(View(token_drop=0.5))
    resnet.check_view(View(text_token_drop=0.5))  # the text tower still has its view
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match=r"--scoring.patch_size: tiny's image tower is a TimmM"):
        model(TINY_TIMM).check_view(View(patch_size=16), 0.5)
    with pytest.raises(ValueError, match="scoring.text_token_drop"):
        View(text_token_drop=1.0)


def test_jest_task_scores_through_the_view():
    """JESTTask takes the same View: a coarse view scores other embeddings than the plain
    forward, is seeded by view_seed, and a view the learner cannot take is refused at once."""
    torch.manual_seed(0)
    learner = create_model(TINY_SIG)
    selector = Selector(SelectionConfig(policy="hard_learner", filter_ratio=0.5, n_chunks=2))
    images, tokens = inputs(n=8)
    view = View(patch_size=16, text_token_drop=0.5)
    plain = JESTTask(learner, None, selector).score(images, tokens)[0]
    coarse = JESTTask(learner, None, selector, view=view).score(images, tokens)[0]
    again = JESTTask(learner, None, selector, view=view).score(images, tokens)[0]
    assert torch.equal(coarse.image, again.image) and torch.equal(coarse.text, again.text)
    assert not torch.allclose(coarse.image, plain.image)
    assert (
        float(coarse.logit_scale)
        == pytest.approx(float(plain.logit_scale))
        == math.e ** math.log(10)
    )
    out = JESTTask(learner, None, selector, view=view).train()(images, tokens)
    assert len(out.selected) == 4 and out["loss"].requires_grad
    with pytest.raises(ValueError, match="--scoring.patch_size 5 does not divide the learner"):
        JESTTask(learner, None, selector, view=View(patch_size=5))


def test_jest_task_trains_part_of_each_sub_batch_at_the_coarse_patch_size():
    """multires_fraction: the task's loss is the loss of the selected pairs with the first half
    of the images encoded at the coarse patch size (OpenClipDual.encode_image_multires, by
    hand), its gradients reach the patch embedding, and it is refused without a patch size or
    outside [0, 1]."""
    torch.manual_seed(0)
    learner = create_model(TINY_SIG)
    selector = Selector(SelectionConfig(policy="hard_learner", filter_ratio=0.5, n_chunks=2))
    images, tokens = inputs(n=8)
    task = JESTTask(learner, None, selector, view=View(patch_size=16), multires_fraction=0.5)
    out = task.train()(images, tokens)
    chosen = out.selected
    by_hand = OpenClipDual(learner)
    img = by_hand.encode_image_multires(images[chosen], 16, 0.5)
    txt = by_hand.encode_text(tokens[chosen])
    expected = task.loss(img, txt, learner.logit_scale.exp(), learner.logit_bias)
    torch.testing.assert_close(out["loss"], expected)
    at_own_size = task.loss(by_hand.encode_image(images[chosen]), txt,
                            learner.logit_scale.exp(), learner.logit_bias)  # fmt: skip
    assert not torch.allclose(out["loss"], at_own_size)  # the coarse half changed the loss
    out["loss"].backward()
    assert learner.visual.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multires_fraction needs view.patch_size"):
        JESTTask(learner, None, selector, multires_fraction=0.5)
    with pytest.raises(ValueError, match=r"multires_fraction must be in \[0, 1\]"):
        JESTTask(learner, None, selector, view=View(patch_size=16), multires_fraction=1.5)


def test_multires_refuses_a_learner_wrapped_in_ddp(tmp_path):
    """DDP would not see the towers' calls (its gradients would not be averaged): refused."""
    assert not torch.distributed.is_initialized()
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(create_model(TINY_SIG))
        selector = Selector(SelectionConfig(policy="hard_learner", filter_ratio=0.5))
        with pytest.raises(ValueError, match="average_gradients"):
            JESTTask(wrapped, None, selector, view=View(patch_size=16), multires_fraction=0.5)
        JESTTask(wrapped, None, selector, view=View(patch_size=16))  # scoring views are fine
    finally:
        torch.distributed.destroy_process_group()


def test_views_need_open_clip_s_own_towers():
    """Text of unknown layout: refused, naming the model."""
    m = model()
    views = OpenClipViews(m.model.visual, "a bare tower")
    with pytest.raises(ValueError, match="a bare tower's text tower"):
        views.check(View(text_token_drop=0.5))
