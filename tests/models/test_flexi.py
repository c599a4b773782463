"""FlexiViT views of the image tower: PI-resize, position resampling, token dropping, multi-res."""

import pytest
import torch
import torch.nn.functional as F

from jestkit.models.dual import DualEncoder, multires_split
from jestkit.models.text import TextConfig, TextTower
from jestkit.models.vit import (
    ImageTower,
    ViTConfig,
    drop_tokens,
    keep_count,
    pi_resize_weight,
    resample_pos_embed,
    resize_matrix,
)


def tower(**kw) -> ImageTower:
    torch.manual_seed(0)
    cfg = ViTConfig(dim=32, depth=1, heads=2, embed_dim=16, **kw)
    return ImageTower(cfg).double()


# --- PI-resize ----------------------------------------------------------------------------------


@pytest.mark.parametrize("new_p", [14, 28])
def test_pi_resize_token_of_upsampled_patch_equals_base_token(new_p):
    """The defining property, on whole images: tokens at patch 7 of x equal tokens at patch p'
    of x nearest-neighbour upsampled by p'/7 (same grid), before position embeddings."""
    m = tower()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    up = F.interpolate(x, scale_factor=new_p // 7, mode="nearest")
    base = m.embed_patches(x)
    resized = m.embed_patches(up, patch_size=new_p)
    assert base.shape == resized.shape == (3, 16, 32)
    torch.testing.assert_close(resized, base, rtol=1e-10, atol=1e-10)


def test_naive_weight_interpolation_fails_the_property():
    """The test above can fail: interpolating the weights instead of PI-resizing breaks it."""
    m = tower()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    w = F.interpolate(m.patch_weight, size=(14, 14), mode="bilinear")
    naive = F.conv2d(up, w, m.patch_bias, stride=14).flatten(2).transpose(1, 2)
    assert (naive - m.embed_patches(x)).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize(("p", "new_p"), [(7, 14), (7, 10), (4, 9), (5, 5)])
def test_pi_resize_identity_for_upsampling(mode, p, new_p):
    """<x, w> = <R x, w'> for every p-patch x when p' >= p, R the mode's resize."""
    torch.manual_seed(1)
    w = torch.randn(6, 2, p, p, dtype=torch.float64)
    x = torch.randn(5, 2, p, p, dtype=torch.float64)
    w2 = pi_resize_weight(w, new_p, mode)
    assert w2.shape == (6, 2, new_p, new_p)
    kw = {} if mode == "nearest" else {"align_corners": False}
    rx = F.interpolate(x, size=(new_p, new_p), mode=mode, **kw)
    torch.testing.assert_close(
        torch.einsum("nchw,dchw->nd", rx, w2), torch.einsum("nchw,dchw->nd", x, w)
    )


def test_resize_matrix_is_the_interpolation():
    x = torch.randn(7, 7, dtype=torch.float64)
    r = resize_matrix(7, 11, "bilinear")
    expect = F.interpolate(x[None, None], size=(11, 11), mode="bilinear", align_corners=False)
    torch.testing.assert_close(r @ x.flatten(), expect.flatten())


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_pi_resize_downsizing_is_the_least_squares_fit(mode):
    """For p' < p, R^T w' = w has no exact solution in general; w' = pinv(R^T) w is its
    least-squares solution, so the residual is orthogonal to the range of R^T: R (R^T w' - w) = 0.
    For w in that range (w = R^T v) the identity holds exactly."""
    torch.manual_seed(2)
    p, new_p = 7, 4
    r = resize_matrix(p, new_p, mode)  # (16, 49)
    w = torch.randn(3, 1, p, p, dtype=torch.float64)
    w2 = pi_resize_weight(w, new_p, mode).reshape(3, -1)
    residual = w2 @ r - w.reshape(3, -1)  # rows: (R^T w' - w)^T
    torch.testing.assert_close(residual @ r.T, torch.zeros(3, new_p**2, dtype=torch.float64))
    v = torch.randn(3, new_p**2, dtype=torch.float64)
    w_in_range = (v @ r).view(3, 1, p, p)
    w3 = pi_resize_weight(w_in_range, new_p, mode).reshape(3, -1)
    torch.testing.assert_close(w3 @ r, w_in_range.reshape(3, -1))


def test_bad_patch_sizes_are_rejected():
    m = tower()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    for p in (5, 8, 0, 29):
        with pytest.raises(ValueError, match="patch_size"):
            m(x, patch_size=p)
    with pytest.raises(ValueError, match="divide"):
        ViTConfig(patch_size=6)


def test_forward_at_every_divisor():
    m = tower()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    for p in (1, 2, 4, 7, 14, 28):
        out = m(x, patch_size=p)
        assert out.shape == (2, 16) and torch.isfinite(out).all()


# --- position embeddings --------------------------------------------------------------------


def test_pos_embed_resampling_shapes_and_base_grid():
    pos = torch.randn(1, 16, 8)
    assert resample_pos_embed(pos, (2, 2)).shape == (1, 4, 8)
    assert resample_pos_embed(pos, (1, 1)).shape == (1, 1, 8)
    assert resample_pos_embed(pos, (7, 7)).shape == (1, 49, 8)
    torch.testing.assert_close(resample_pos_embed(pos, (4, 4)), pos)
    # The interpolation path at the base size is the identity too.
    grid = pos.reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    same = F.interpolate(grid, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(same, grid)


def test_pos_embed_resampling_keeps_a_constant_grid():
    const = torch.randn(1, 1, 8).expand(1, 16, 8)
    for grid in ((2, 2), (1, 1), (7, 7)):
        out = resample_pos_embed(const, grid)
        torch.testing.assert_close(out, const[:, :1].expand_as(out))


def test_coarse_view_uses_resampled_positions():
    """At patch 14 the tower adds the 2x2 resampled positions to the 4 tokens."""
    m = tower()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        before = m(x, patch_size=14)
        m.pos_embed.add_(torch.randn_like(m.pos_embed))
        after = m(x, patch_size=14)
    assert not torch.allclose(before, after)


# --- token dropping -------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "kept"), [(0.0, 16), (0.25, 12), (0.5, 8), (0.75, 4), (0.9, 2)])
def test_token_drop_keeps_the_stated_share(rate, kept):
    assert keep_count(16, rate) == kept
    x = torch.randn(5, 16, 3)
    out = drop_tokens(x, rate, torch.Generator().manual_seed(0))
    assert out.shape == (5, kept, 3)
    for row, orig in zip(out, x, strict=True):
        # Every kept token is one of the image's own tokens, none twice, in original order.
        idx = [int((orig == t).all(dim=1).nonzero()) for t in row]
        assert idx == sorted(set(idx))


def test_token_drop_is_deterministic_per_seed_and_varies_over_rows():
    x = torch.arange(8 * 16, dtype=torch.float32).view(8, 16, 1)
    a = drop_tokens(x, 0.5, torch.Generator().manual_seed(3))
    b = drop_tokens(x, 0.5, torch.Generator().manual_seed(3))
    c = drop_tokens(x, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    kept_sets = {tuple((row.flatten() % 16).tolist()) for row in a}
    assert len(kept_sets) > 1  # each image draws its own tokens


def test_token_drop_in_the_tower():
    m = tower()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    out = m(x, token_drop=0.5, generator=torch.Generator().manual_seed(0))
    same = m(x, token_drop=0.5, generator=torch.Generator().manual_seed(0))
    other = m(x, token_drop=0.5, generator=torch.Generator().manual_seed(1))
    assert out.shape == (4, 16)
    assert torch.equal(out, same)
    assert not torch.allclose(out, other)
    combined = m(x, patch_size=14, token_drop=0.5, generator=torch.Generator().manual_seed(0))
    assert combined.shape == (4, 16)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="token_drop"):
            m(x, token_drop=bad)


# --- multi-resolution training --------------------------------------------------------------


def test_multires_split():
    assert multires_split(8, 0.5) == 4
    assert multires_split(7, 0.5) == 4
    assert multires_split(8, 0.0) == 0 and multires_split(8, 1.0) == 8
    with pytest.raises(ValueError):
        multires_split(8, 1.5)


def test_multires_step_trains_the_patch_embedding_from_both_resolutions():
    torch.manual_seed(0)
    img = ImageTower(ViTConfig(dim=32, depth=1, heads=2, embed_dim=16))
    txt = TextTower(TextConfig(vocab_size=20, dim=32, depth=1, heads=2, embed_dim=16))
    model = DualEncoder(img, txt)
    x = torch.rand(8, 1, 28, 28)
    tokens = torch.randint(1, 20, (8, 6))

    # Each half alone sends gradient to the shared patch embedding.
    for part in (model.encode_image(x[:4], patch_size=14), model.encode_image(x[4:])):
        (grad,) = torch.autograd.grad(part.square().sum() + part.sum(), img.patch_weight)
        assert grad.abs().sum() > 0

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    emb = model.encode_image_multires(x, patch_size=14, fraction_coarse=0.5)
    expect = torch.cat([model.encode_image(x[:4], patch_size=14), model.encode_image(x[4:])])
    torch.testing.assert_close(emb, expect)
    loss = model.loss(emb, model.encode_text(tokens))
    loss.backward()
    assert img.patch_weight.grad.abs().sum() > 0
    before = img.patch_weight.detach().clone()
    opt.step()
    assert not torch.equal(before, img.patch_weight)
