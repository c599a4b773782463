"""FLOP counting against closed forms, and the saving of the cheaper scoring views."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from jestkit.engine.flops import FlopMeter, count_flops, count_no_grad_flops
from jestkit.models.vit import ImageTower, ViTConfig


def test_linear_matches_closed_form():
    m, k, n = 6, 10, 7
    layer = torch.nn.Linear(k, n)
    out, flops = count_flops(layer, torch.randn(m, k))
    assert out.shape == (m, n)
    assert flops == 2 * m * n * k


def test_batched_matmul_matches_closed_form():
    b, m, k, n = 3, 5, 4, 6
    _, flops = count_flops(torch.bmm, torch.randn(b, m, k), torch.randn(b, k, n))
    assert flops == 2 * b * m * n * k
    _, flops = count_flops(torch.matmul, torch.randn(2, b, m, k), torch.randn(2, b, k, n))
    assert flops == 2 * 2 * b * m * n * k


def forward_backward(fn):
    loss = fn()
    loss.backward()
    return loss.detach()


def count_train_flops(fn):
    """A training step through the loop's FlopMeter: (the detached loss, its FLOPs)."""
    meter = FlopMeter()
    loss = meter.run("train", forward_backward, fn)
    return loss, meter.per_step["train"]


def test_train_step_counts_forward_and_backward():
    m, k, n = 6, 10, 7
    layer = torch.nn.Linear(k, n)
    x = torch.randn(m, k)
    loss, flops = count_train_flops(lambda: layer(x).square().sum())
    # forward x W^T; backward: grad W = g^T x (the input needs no gradient).
    assert flops == 2 * (2 * m * n * k)
    assert loss.requires_grad is False
    assert layer.weight.grad is not None
    x.requires_grad_(True)
    _, flops = count_train_flops(lambda: layer(x).square().sum())
    assert flops == 3 * (2 * m * n * k)  # plus grad x = g W


def test_meter_measures_once_and_counts_every_call():
    layer = torch.nn.Linear(4, 3)
    meter = FlopMeter(world_size=2)
    for _ in range(3):
        meter.run("learner_score", layer, torch.randn(2, 4))
    assert meter.per_step["learner_score"] == 2 * 2 * 4 * 3
    assert meter.total["learner_score"] == 3 * 2 * (2 * 2 * 4 * 3)  # 3 calls on 2 ranks
    assert meter.sum() == meter.total["learner_score"]


def test_no_grad_scoring():
    layer = torch.nn.Linear(4, 3)
    out, flops = count_no_grad_flops(layer, torch.randn(2, 4))
    assert flops == 2 * 2 * 4 * 3
    assert out.grad_fn is None


def test_vit_flops_closed_form_and_cheaper_views():
    torch.manual_seed(0)
    cfg = ViTConfig()
    tower = ImageTower(cfg)
    x = torch.rand(16, 1, 28, 28)
    _, f7 = count_no_grad_flops(tower, x)
    tower(x, patch_size=14)  # computes and keeps pinv(R) for patch 14
    _, f14 = count_no_grad_flops(tower, x, patch_size=14)
    g = torch.Generator().manual_seed(0)
    _, f_drop = count_no_grad_flops(tower, x, token_drop=0.5, generator=g)
    _, f_both = count_no_grad_flops(tower, x, patch_size=14, token_drop=0.5, generator=g)

    def closed_form(tokens: int, resize: int = 0) -> int:
        d, hidden, n = cfg.dim, int(cfg.dim * cfg.mlp_ratio), len(x)
        per_token = 2 * d * 3 * d + 2 * d * d + 2 * 2 * d * hidden  # qkv, proj, mlp
        attention = 2 * 2 * tokens * tokens * d  # scores and weighted sum
        block = n * (tokens * per_token + attention)
        patch_embed = 2 * n * 28 * 28 * cfg.channels * d  # conv: every pixel once
        return cfg.depth * block + patch_embed + 2 * n * d * cfg.embed_dim + resize

    assert f7 == closed_form(16)
    resize = 2 * cfg.dim * cfg.channels * 7 * 7 * 14 * 14  # W @ pinv(R), once per batch
    assert f14 == closed_form(4, resize)
    assert f_drop == closed_form(8)  # tokens are dropped after the patch embedding
    assert f_both == closed_form(2, resize)
    assert f14 / f7 < 0.3  # about 74 % fewer FLOPs at patch 14
    assert f_drop / f7 < 0.55
    assert f_both / f7 < 0.16


# --- fused attention: the kernels PyTorch runs on the CPU ----------------------------------------


class TinyAttention(torch.nn.Module):
    """One self-attention layer, its attention fused (F.scaled_dot_product_attention) or
    written as matmuls."""

    def __init__(self, dim: int, heads: int, fused: bool):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x):
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


def attention_closed_form(n, length, dim, backward=False):
    """Forward: the qkv and output projections and the two attention products. Backward (the
    input needs no gradient): each projection's weight and input gradients (2x its forward,
    but the first layer's input gradient is not computed), and for the fused kernel five
    attention products (the scores recomputed, then dV, dP, dQ, dK)."""
    qkv, proj = 2 * n * length * dim * 3 * dim, 2 * n * length * dim * dim
    attention = 2 * 2 * n * length * length * dim
    forward = qkv + proj + attention
    if not backward:
        return forward
    return forward + qkv + 2 * proj + attention // 2 * 5


@pytest.mark.parametrize("fused", [False, True])
def test_attention_counted_with_and_without_fused_kernels(fused):
    torch.manual_seed(0)
    n, length, dim, heads = 3, 10, 16, 2
    layer = TinyAttention(dim, heads, fused)
    x = torch.randn(n, length, dim)
    _, flops = count_no_grad_flops(layer, x)
    assert flops == attention_closed_form(n, length, dim)
    if fused:  # torch's own counter misses the CPU kernel: the attention products are lost
        with FlopCounterMode(display=False) as plain, torch.no_grad():
            layer(x)
        missing = attention_closed_form(n, length, dim) - plain.get_total_flops()
        assert missing == 2 * 2 * n * length * length * dim
        _, flops = count_train_flops(lambda: layer(x).square().sum())
        assert flops == attention_closed_form(n, length, dim, backward=True)


def test_multi_head_attention_fast_path_counted():
    """nn.MultiheadAttention in eval mode without gradients runs one fused kernel
    (_native_multi_head_attention): projections and attention, counted in full."""
    torch.manual_seed(0)
    n, length, dim = 3, 10, 16
    mha = torch.nn.MultiheadAttention(dim, 2, batch_first=True).eval()
    x = torch.randn(n, length, dim)
    _, flops = count_no_grad_flops(lambda t: mha(t, t, t, need_weights=False)[0], x)
    assert flops == attention_closed_form(n, length, dim)


def test_open_clip_scoring_closed_form():
    """A tiny open_clip model (fused attention in both towers), scored in full and through
    Flexi-JEST's view (patch 16: 4 + 1 tokens; 8 of 16 text positions), against the closed
    form: the counter sees all of it, and the view costs what its token counts say."""
    pytest.importorskip("open_clip")
    from shard_files import TINY_SIG

    from jestkit.models.view import View
    from jestkit.openclip.dual import OpenClipDual
    from jestkit.openclip.model import create_model

    torch.manual_seed(0)
    model = OpenClipDual(create_model(TINY_SIG)).eval()
    n, width, embed = 4, 64, 32
    images, tokens = torch.rand(n, 3, 32, 32), torch.randint(1, 1000, (n, 16))

    def towers(image_tokens: int, text_tokens: int) -> int:
        def layers(t):
            return 2 * n * (t * 24 * width * width + 2 * 2 * t * t * width)  # 2 layers, mlp 4x

        patch_embed = 2 * n * 32 * 32 * 3 * width  # every pixel once, at any patch size
        heads = 2 * 2 * n * width * embed  # the two projections
        return patch_embed + layers(image_tokens) + layers(text_tokens) + heads

    _, full = count_no_grad_flops(model.embeddings, images, tokens)
    assert full == towers(17, 16)
    view = View(patch_size=16, text_token_drop=0.5)
    model.embeddings(images, tokens, view)  # keeps pinv(R) of patch 16
    _, coarse = count_no_grad_flops(model.embeddings, images, tokens, view)
    resize = 2 * width * 3 * 8 * 8 * 16 * 16  # the patch embedding's W @ pinv(R), per batch
    assert coarse == towers(5, 8) + resize
