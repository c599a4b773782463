"""FLOP counting against closed forms, and the saving of the cheaper scoring views."""

import torch

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
