"""The approximate gradient kernels against their stated errors and bounds, measured against exact references."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from conftest import spd

import eigpool
from eigpool.eigh import kernel_matrix

L = np.sort(np.concatenate([np.geomspace(1e-3, 10, 12), [2.0, 2.0 * (1 + 1e-9), 2.0 * (1 + 1e-4)]]))


def _exact_inverse_gaps(l):
    """1/(l_i - l_j) in 50-digit arithmetic (0 on the diagonal and at exact ties)."""
    with mpmath.workdps(50):
        mp = [mpmath.mpf(float(x)) for x in l]
        return np.array([[float(1 / (a - b)) if a != b else 0.0 for b in mp] for a in mp])


def _ratio(l):
    li, lj = l[:, None], l[None, :]
    return np.minimum(li, lj) / np.maximum(li, lj), np.maximum(li, lj)


def test_exact_kernel_is_antisymmetric_and_zero_at_ties():
    K = kernel_matrix(np, np.array([1.0, 1.0, 2.0]), "exact", {})
    np.testing.assert_array_equal(K, -K.T)
    assert K[0, 1] == 0 and K[2, 0] == 1.0


@pytest.mark.parametrize("degree", [5, 20, 100])
def test_taylor_kernel_error_and_bound(degree):
    K = kernel_matrix(np, L, "taylor", {"degree": degree})
    exact = _exact_inverse_gaps(L)
    r, hi = _ratio(L)
    off = ~np.eye(len(L), dtype=bool)
    np.testing.assert_array_equal(K, -K.T)
    assert np.all(np.abs(K[off]) <= (degree + 1) / hi[off] * (1 + 1e-14))
    # Relative error of the truncated geometric series: exactly r^(degree+1).
    distinct = off & (exact != 0)
    rel = np.abs(K[distinct] - exact[distinct]) / np.abs(exact[distinct])
    np.testing.assert_allclose(rel, r[distinct] ** (degree + 1), rtol=1e-6, atol=1e-15)


@pytest.mark.parametrize(("order", "delta"), [(1, 1e-2), (2, 1e-3), (3, 1e-4)])
def test_pade_kernel_error_and_bound(order, delta):
    K = kernel_matrix(np, L, "pade", {"order": order, "delta": delta})
    exact = _exact_inverse_gaps(L)
    r, hi = _ratio(L)
    x = 1 - r
    off = ~np.eye(len(L), dtype=bool)
    np.testing.assert_allclose(K, -K.T, atol=0)
    bound = (2 * order - 1) ** ((2 * order - 1) / (2 * order)) / (2 * order * delta * hi)
    assert np.all(np.abs(K[off]) <= bound[off] * (1 + 1e-12))
    distinct = off & (exact != 0)
    rel = np.abs(K[distinct] - exact[distinct]) / np.abs(exact[distinct])
    stated = delta ** (2 * order) / (x[distinct] ** (2 * order) + delta ** (2 * order))
    np.testing.assert_allclose(rel, stated, rtol=1e-6, atol=1e-15)
    assert np.all(rel <= (delta / x[distinct]) ** (2 * order) * (1 + 1e-12) + 1e-15)


def test_clip_kernel_threshold():
    K = kernel_matrix(np, L, "clip", {"threshold": 100.0})
    exact = _exact_inverse_gaps(L)
    assert np.abs(K).max() == 100.0
    small = np.abs(exact) < 100
    np.testing.assert_allclose(K[small], exact[small], rtol=1e-12)


def test_power_iteration_kernel_is_the_derivative_of_deflated_power_iteration():
    # Independent reference: autodiff (PyTorch) through a literal deflated power iteration started at the eigenvectors
    # (its fixed point): v <- M v / ||M v||, n times, then l = v^T M v and M <- M - l v v^T, largest eigenvalue first.
    torch = pytest.importorskip("torch")
    n = 6
    S = spd(1, [0.5, 0.9, 1.4, 2.2, 3.0])
    G = np.random.default_rng(1).standard_normal((5, 5))

    def deflated_power_iteration(St, U0):
        M, values, vectors = St, [], []
        for k in reversed(range(St.shape[0])):
            v = U0[:, k]
            for _ in range(n):
                w = M @ v
                v = w / torch.linalg.norm(w)
            lam = v @ M @ v
            M = M - lam * torch.outer(v, v)
            values.append(lam)
            vectors.append(v)
        return torch.stack(values[::-1]), torch.stack(vectors[::-1], dim=1)

    St = torch.tensor(S, requires_grad=True)
    _, U0 = torch.linalg.eigh(St.detach())
    lam, V = deflated_power_iteration(St, U0)
    Gt = torch.tensor(G)
    (lam.sum() + (V * Gt).sum()).backward()
    reference = ((St.grad + St.grad.T) / 2).numpy()

    (_, U), pullback = eigpool.vjp(lambda S: eigpool.eigh(S, grad="power_iteration", iterations=n), S)
    signs = np.sign(np.sum(U * U0.numpy(), axis=0))  # the two eigensolvers may choose opposite column signs
    (dS,) = pullback((np.ones(5), G * signs))
    np.testing.assert_allclose(dS, reference, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("grad", ["taylor", "pade", "clip", "power_iteration"])
def test_spectral_kernel_route_equals_the_chain_through_eigh(grad):
    # sqrtm(S, grad=k) must equal the chain rule through eigh(S, grad=k): F = U diag(f(l)) U^T with
    # gU = 2 sym(G) U diag(f(l)) and gl = f'(l) diag(U^T G U).
    S = spd(2, [0.3, 0.9, 0.9 * (1 + 1e-7), 2.0, 5.0])
    G = np.random.default_rng(2).standard_normal((5, 5))
    _, pullback = eigpool.vjp(lambda S: eigpool.sqrtm(S, grad=grad), S)
    (l, U), eig_pullback = eigpool.vjp(lambda S: eigpool.eigh(S, grad=grad), S)
    Gs = (G + G.T) / 2
    gU = 2 * Gs @ U * np.sqrt(l)
    gl = np.diag(U.T @ Gs @ U) * 0.5 / np.sqrt(l)
    # The chain through eigh cancels terms of size 1/gap ~ 1e7: agreement to ~1e-16 * 1e7 is all it can give.
    np.testing.assert_allclose(pullback(G)[0], eig_pullback((gl, gU))[0], rtol=0, atol=1e-8)


def test_taylor_and_pade_are_finite_at_exact_ties_where_the_chain_is_not():
    S = spd(3, [1.0, 1.0, 2.0, 3.0])
    G = np.random.default_rng(3).standard_normal((4, 4))
    for grad in ("taylor", "pade", "power_iteration"):
        _, pullback = eigpool.vjp(lambda S, grad=grad: eigpool.eigh(S, grad=grad), S)
        assert np.all(np.isfinite(pullback((np.ones(4), G))[0]))
