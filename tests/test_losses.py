"""distill.losses: Soft-HGR against numpy, its invariances and optimum, gradients, KD."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill.losses import hgr_three_way, kd_loss, soft_hgr  # noqa: E402


def _numpy_soft_hgr(f: np.ndarray, g: np.ndarray) -> float:
    f, g = f - f.mean(0), g - g.mean(0)
    n = len(f)
    return float(np.trace(f.T @ g) / (n - 1) - 0.5 * np.trace(np.cov(f, rowvar=False) @ np.cov(g, rowvar=False)))


def test_matches_numpy():
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(17, 5)), rng.normal(size=(17, 5)) + 0.5 * rng.normal(size=(17, 1))
    got = soft_hgr(torch.tensor(f), torch.tensor(g)).item()
    assert got == pytest.approx(_numpy_soft_hgr(f, g), rel=1e-10, abs=1e-12)


def test_shift_invariant():
    rng = np.random.default_rng(1)
    f, g = torch.tensor(rng.normal(size=(9, 4))), torch.tensor(rng.normal(size=(9, 4)))
    base = soft_hgr(f, g)
    torch.testing.assert_close(soft_hgr(f + 3.0, g - torch.tensor([1.0, 2.0, -5.0, 7.0], dtype=f.dtype)), base)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_identical_whitened_features_give_half_k(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(64, k))
    x -= x.mean(0)
    w = np.linalg.cholesky(np.linalg.inv(np.atleast_2d(np.cov(x, rowvar=False))))
    z = torch.tensor(x @ w)  # unbiased covariance exactly I
    assert soft_hgr(z, z).item() == pytest.approx(k / 2, rel=1e-9)
    assert soft_hgr(z, torch.tensor(rng.normal(size=(64, k)))).item() < k / 2


def test_finite_gradients_at_batch_two():
    f = torch.randn(2, 6, requires_grad=True)
    g = torch.randn(2, 6, requires_grad=True)
    soft_hgr(f, g).backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(g.grad).all() and f.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        soft_hgr(f[:1], g[:1])


def test_three_way_terms_and_mask():
    torch.manual_seed(0)
    fa, fv, fl = torch.randn(8, 4), torch.randn(8, 4), torch.randn(8, 4)
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.bool)
    want = soft_hgr(fa, fv) + soft_hgr(fa[mask], fl[mask]) + soft_hgr(fv[mask], fl[mask])
    torch.testing.assert_close(hgr_three_way(fa, fv, fl, mask), want)
    torch.testing.assert_close(hgr_three_way(fa, None, fl, mask), soft_hgr(fa[mask], fl[mask]))
    torch.testing.assert_close(hgr_three_way(fa, fv, fl, torch.zeros(8, dtype=torch.bool)), soft_hgr(fa, fv))
    assert hgr_three_way(None, fv, fl, torch.zeros(8, dtype=torch.bool)).item() == 0.0


def test_kd_loss():
    t = torch.randn(5, 7)
    assert kd_loss(t.clone(), t, T=3.0).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(5, 7, requires_grad=True)
    loss = kd_loss(s, t, T=2.0)
    p, q = torch.softmax(t / 2, 1), torch.log_softmax(s / 2, 1)
    want = (p * (p.log() - q)).sum(1).mean() * 4
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert torch.isfinite(s.grad).all()
