"""Image and text towers and the dual encoder."""

import math

import pytest
import torch

import jestkit
from jestkit.models.dual import DualEncoder
from jestkit.models.text import TextConfig, TextTower
from jestkit.models.view import View
from jestkit.models.vit import Block, ImageTower, ViTConfig

VOCAB = 30


def small_model(loss="sigmoid", seed=0) -> DualEncoder:
    torch.manual_seed(seed)
    img = ImageTower(ViTConfig(dim=32, depth=2, heads=2, embed_dim=24))
    txt = TextTower(TextConfig(vocab_size=VOCAB, max_len=8, dim=32, depth=1, heads=2, embed_dim=24))
    return DualEncoder(img, txt, loss=loss)


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g).float() / 255
    tokens = torch.randint(1, VOCAB, (n, 8), generator=g)
    tokens[:, 5:] = 0  # padded captions
    return images, tokens


# --- towers -------------------------------------------------------------------------------


def test_shapes_and_unit_norm():
    model = small_model()
    images, tokens = batch()
    assert model.image_tower(images).shape == (8, 24)
    assert model.text_tower(tokens).shape == (8, 24)
    img, txt = model(images, tokens)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(8))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(8))
    assert model.encode_image(images, patch_size=14).shape == (8, 24)


def test_default_configs():
    cfg = ViTConfig()
    assert (cfg.image_size, cfg.patch_size, cfg.dim, cfg.depth, cfg.heads) == (28, 7, 128, 4, 4)
    tower = ImageTower(cfg)
    assert tower.pos_embed.shape == (1, 16, 128)
    assert tower(torch.rand(2, 1, 28, 28)).shape == (2, 128)


def test_towers_share_one_block_class():
    model = small_model()
    assert all(isinstance(b, Block) for b in model.image_tower.blocks)
    assert all(isinstance(b, Block) for b in model.text_tower.blocks)


def test_text_padding_is_ignored():
    """Extra pad tokens change nothing: pads are masked as keys and left out of the pool."""
    model = small_model()
    tokens = torch.tensor([[3, 4, 5, 0, 0], [7, 0, 0, 0, 0]])
    longer = torch.cat([tokens, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model.text_tower(tokens), model.text_tower(longer))


def test_text_edge_cases():
    model = small_model()
    assert torch.isfinite(model.text_tower(torch.zeros(2, 4, dtype=torch.long))).all()
    with pytest.raises(ValueError, match="max_len"):
        model.text_tower(torch.ones(1, 9, dtype=torch.long))


def test_image_normalisation_is_inside_the_model():
    tower = small_model().image_tower
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(tower.normalize(x), (x - 0.2860) / 0.3530)


# --- dual encoder ---------------------------------------------------------------------------


def test_init_sigmoid_as_siglip():
    model = small_model("sigmoid")
    assert model.logit_scale.item() == pytest.approx(10.0)
    assert model.logit_bias.item() == pytest.approx(-10.0)
    names = dict(model.named_parameters())
    assert "log_scale" in names and "bias" in names
    assert names["log_scale"].item() == pytest.approx(math.log(10.0))


def test_init_softmax_as_clip():
    model = small_model("softmax")
    assert model.logit_scale.item() == pytest.approx(1 / 0.07)
    assert model.logit_bias.item() == 0.0
    assert "bias" not in dict(model.named_parameters())  # a constant, not trained


def test_unknown_loss_lists_choices():
    with pytest.raises(ValueError, match="sigmoid.*softmax"):
        small_model("triplet")


def test_embeddings_for_selection():
    model = small_model()
    images, tokens = batch()
    emb = model.embeddings(images, tokens)
    assert isinstance(emb, jestkit.Embeddings)
    assert emb.image.shape == emb.text.shape == (8, 24)
    assert not emb.image.requires_grad and not emb.text.requires_grad
    assert emb.logit_scale == pytest.approx(10.0) and emb.logit_bias == pytest.approx(-10.0)
    coarse = model.embeddings(
        images, tokens, View(patch_size=14, token_drop=0.5), torch.Generator().manual_seed(0)
    )
    assert coarse.image.shape == (8, 24)
    # The selection core accepts them.
    idx = jestkit.select(
        emb, coarse, filter_ratio=0.5, n_chunks=2, generator=torch.Generator().manual_seed(0)
    )
    assert len(idx) == 4


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
def test_a_few_steps_reduce_the_loss(loss):
    model = small_model(loss)
    images, tokens = batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        value = model.loss(*model(images, tokens))
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < 0.9 * losses[0], losses
    if loss == "sigmoid":
        assert model.bias.grad is not None and model.log_scale.grad is not None
