"""The fast row sums of softplus behind both contrastive gains equal softplus itself, on the fast
path (products of sigmoids) and on the fallback for logits whose products leave float range."""

import pytest
import torch

from jestkit.core.gains import Weighted, _log1p_exp_sums, _softplus_row_sums, _with_ones
from jestkit.core.losses import gain_state
from jestkit.core.naive import random_embeddings


def _expected(rows, shifts, cols):
    x = rows.double() @ cols.double().T + shifts.double()[:, None]
    return torch.logaddexp(x, torch.zeros(())).sum(0)  # exact; F.softplus cuts at x > 20


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spread", [1.0, 30.0, 400.0])  # 400: every block falls back
@pytest.mark.parametrize("n_rows", [1, 5, 37])
def test_softplus_row_sums_equal_softplus(dtype, spread, n_rows):
    g = torch.Generator().manual_seed(n_rows)
    rows = spread * torch.randn(n_rows, 6, generator=g, dtype=dtype) / 6**0.5
    shifts = spread * torch.randn(n_rows, generator=g, dtype=dtype)
    cols = torch.randn(300, 6, generator=g, dtype=dtype) / 6**0.5
    out = torch.full((300,), 2.0, dtype=dtype)
    work = torch.empty(64 * 8, dtype=dtype)  # many blocks: 64 columns, up to 8 rows each
    _softplus_row_sums(rows, shifts, _with_ones(cols), out, -0.5, work)
    expected = 2.0 - 0.5 * _expected(rows, shifts, cols)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol * spread)


def test_softplus_row_sums_keep_nan():
    cols = _with_ones(torch.randn(4, 3))
    out = torch.zeros(4)
    nan_row = torch.tensor([[float("nan"), 0.0, 0.0]])
    _softplus_row_sums(nan_row, torch.zeros(1), cols, out, 1.0, torch.empty(64))
    assert torch.isnan(out).all()


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
def test_fp32_gains_with_large_logits_match_the_naive_oracle(loss):
    """Trained-model scales (sigmoid t = 100, softmax t = 100) in fp32 push many products out of
    range: the bounded gains still agree with the B x B listing."""
    g = torch.Generator().manual_seed(0)
    learner = random_embeddings(200, 16, g, 100.0, -12.0, noise=0.5)
    reference = random_embeddings(200, 16, g, 60.0, -8.0, noise=0.5)
    models = [Weighted(learner, 1.0), Weighted(reference, -1.0)]
    fast = gain_state(loss, models, block_size=32)
    oracle = gain_state(loss, models, naive=True)
    chosen = torch.randperm(200, generator=g)[:60]
    for chunk in chosen.split(20):
        fast.add(chunk)
        oracle.add(chunk)
    rest = torch.ones(200, dtype=torch.bool)
    rest[chosen] = False
    expected = oracle.gains()[rest].double()
    scale = expected.abs().max()
    torch.testing.assert_close(fast.gains()[rest].double(), expected, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spread", [1.0, 400.0])  # 400: sums overflow, logsumexp takes over
def test_log1p_exp_sums_grow_a_log_partition_exactly(dtype, spread):
    g = torch.Generator().manual_seed(3)
    rows = spread * torch.randn(21, 5, generator=g, dtype=dtype) / 5**0.5
    cols = torch.randn(150, 5, generator=g, dtype=dtype) / 5**0.5
    partition = torch.randn(150, generator=g, dtype=dtype)  # L_k
    shifted = torch.cat([cols, -partition[:, None]], 1)
    grown = partition + _log1p_exp_sums(rows, shifted, torch.empty(64 * 4, dtype=dtype))
    x = torch.cat([partition[None].double(), rows.double() @ cols.double().T])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(grown.double(), torch.logsumexp(x, 0), rtol=tol, atol=tol)
