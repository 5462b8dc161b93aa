"""The core's numerics against independent references: SciPy forwards, the Sylvester equation, finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
from conftest import spd
from ops import BY_NAME

import eigpool

DISTINCT = [0.7, 1.1, 1.6, 2.3, 3.1, 4.2]
TIED = [1.0, 1.0, 1.0, 2.0, 2.0, 3.5]


# The functions whose gradient at exact ties is the limit of nearby distinct spectra (ops.py holds the table).
SPECTRAL = ["sqrtm", "invsqrtm", "powm(0.3)", "powm(-1.5)", "powm(2)", "logm", "expm_neg", "seb", "spectral(cbrt)"]


def test_sqrtm_vjp_solves_the_sylvester_equation():
    # Q = S^(1/2) implies Q dQ + dQ Q = dS, so the adjoint X of G satisfies Q X + X Q = sym(G).
    S = spd(3, DISTINCT)
    G = np.random.default_rng(3).standard_normal(S.shape)
    _, pullback = eigpool.vjp(eigpool.sqrtm, S)
    Q = sl.sqrtm(S).real
    np.testing.assert_allclose(pullback(G)[0], sl.solve_sylvester(Q, Q, (G + G.T) / 2), rtol=1e-10, atol=1e-12)


def test_eigh_forward_properties_and_order():
    S = spd(4, DISTINCT)
    l, U = eigpool.eigh(S)
    assert np.all(np.diff(l) > 0)
    np.testing.assert_allclose(U.T @ U, np.eye(6), atol=1e-13)
    np.testing.assert_allclose(S @ U, U * l, atol=1e-13 * np.abs(l).max())


def _fixed_sign_eigh(S, ref_U):
    l, U = np.linalg.eigh(S)
    return l, U * np.sign(np.sum(U * ref_U, axis=0))


def test_eigh_exact_vjp_matches_finite_differences():
    S = spd(5, DISTINCT)
    rng = np.random.default_rng(5)
    gl, gU = rng.standard_normal(6), rng.standard_normal((6, 6))
    (l0, U0), pullback = eigpool.vjp(eigpool.eigh, S)
    (dS,) = pullback((gl, gU))
    E = rng.standard_normal((6, 6))
    E = (E + E.T) / 2
    h = 1e-5

    def f(t):
        l, U = _fixed_sign_eigh(S + t * E, U0)
        return np.sum(gl * l) + np.sum(gU * U)

    fd = (f(h) - f(-h)) / (2 * h)
    assert abs(fd - np.sum(dS * E)) <= 1e-7 * abs(fd)


@pytest.mark.parametrize("name", SPECTRAL)
def test_gradient_at_exact_ties_is_the_limit_of_distinct_spectra(name):
    # Truncation cuts between l_3 and l_4 here (1 and 2): a cut inside a tie has no derivative.
    fn = BY_NAME[name].fn
    G = np.random.default_rng(6).standard_normal((6, 6))
    grads = []
    for eps in (0.0, 1e-6, 2e-6):
        spectrum = np.array(TIED) * (1 + eps * np.arange(6))
        _, pullback = eigpool.vjp(fn, spd(7, spectrum))
        grads.append(pullback(G)[0])
    assert np.all(np.isfinite(grads[0]))
    # First-order convergence: the gradient at eps is grad(0) + O(eps); extrapolate eps -> 0 from the two.
    limit = 2 * grads[1] - grads[2]
    np.testing.assert_allclose(grads[0], limit, atol=1e-9 * np.abs(limit).max())


def test_singular_covariance_gradients_are_finite_and_bounded():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((3, 64, 16))
    S = eigpool.covariance(X)
    G = rng.standard_normal(S.shape)
    for fn in (eigpool.sqrtm, eigpool.logm, eigpool.seb, lambda S: eigpool.powm(S, 0.5),
               lambda S: eigpool.sqrtm(S, grad="taylor"), lambda S: eigpool.sqrtm(S, grad="pade"),
               lambda S: eigpool.sqrtm(S, grad="power_iteration"), lambda S: eigpool.sqrtm(S, grad="clip")):
        out, pullback = eigpool.vjp(fn, S)
        (dS,) = pullback(G)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(dS))
        assert np.linalg.norm(dS) <= 100 * np.linalg.norm(G)
    _, pullback = eigpool.vjp(lambda X: eigpool.sqrtm(eigpool.covariance(X)), X)
    assert np.all(np.isfinite(pullback(G)[0]))


def test_floor_subgradient_is_zero_below_the_floor():
    # Eigenvalues below floor * max|l| are clamped: perturbing only those directions changes nothing.
    l = np.array([1e-9, 2e-9, 1.0, 2.0])
    S = spd(9, l)
    out, pullback = eigpool.vjp(lambda S: eigpool.sqrtm(S, floor=1e-6), S)
    _, U = np.linalg.eigh(S)
    P = U[:, :2] @ U[:, :2].T
    (dS,) = pullback(np.random.default_rng(9).standard_normal((4, 4)))
    assert abs(np.sum(dS * P)) < 1e-12
    np.testing.assert_allclose(out, (U * np.sqrt(np.maximum(l, 2e-6))) @ U.T, atol=1e-12)


@pytest.mark.parametrize("name", ["sqrtm", "logm", "seb", "truncate(2)", "ns_sqrtm(30)"])
def test_batch_independence(name):
    fn = BY_NAME[name].fn
    rng = np.random.default_rng(10)
    batch = np.stack([spd(11, DISTINCT), spd(12, TIED), spd(13, [0, 0, 0, 1, 2, 3]), 1e6 * spd(14, DISTINCT)])
    if name.startswith("ns_") or name in ("logm",):
        batch = batch[[0, 1, 3]]
    G = rng.standard_normal(batch.shape)
    out, pullback = eigpool.vjp(fn, batch)
    (grad,) = pullback(G)
    for i in range(len(batch)):
        out_i, pullback_i = eigpool.vjp(fn, batch[i])
        np.testing.assert_array_equal(out[i], out_i)
        np.testing.assert_array_equal(grad[i], pullback_i(G[i])[0])


def test_float32_in_float32_out_computed_in_float64():
    S = spd(15, DISTINCT)
    Q32 = eigpool.sqrtm(S.astype(np.float32))
    assert Q32.dtype == np.float32
    np.testing.assert_allclose(Q32, sl.sqrtm(S).real.astype(np.float32), rtol=2e-6)
    _, pullback = eigpool.vjp(eigpool.sqrtm, S.astype(np.float32))
    assert pullback(np.ones((6, 6), np.float32))[0].dtype == np.float32


def test_triu_vectorisation_round_trip_and_size():
    S = spd(16, DISTINCT)
    v = eigpool.triu_vec(S)
    assert v.shape == (21,)
    np.testing.assert_array_equal(v, S[np.triu_indices(6)])
    np.testing.assert_array_equal(eigpool.triu_unvec(v), S)
    assert eigpool.triu_vec(np.zeros((2, 256, 256))).shape == (2, 32896)
    assert eigpool.triu_vec(np.zeros((3, 0, 0))).shape == (3, 0)
    assert eigpool.triu_unvec(np.zeros((3, 0))).shape == (3, 0, 0)


def test_triu_vjps_are_the_adjoints():
    # triu_vec reads the upper triangle of any square matrix: its VJP puts g there and 0 below; triu_unvec's VJP sums
    # the two mirror entries. Both against an index-based reference, and <L v, G> = <v, L^T G> for triu_unvec.
    rng = np.random.default_rng(30)
    A, G = rng.standard_normal((2, 2, 7, 7))
    v, g = rng.standard_normal((2, 2, 28))
    iu = np.triu_indices(7)
    out, pullback = eigpool.vjp(eigpool.triu_vec, A)
    expected = np.zeros_like(A)
    expected[..., iu[0], iu[1]] = g
    np.testing.assert_array_equal(out, A[..., iu[0], iu[1]])
    np.testing.assert_array_equal(pullback(g)[0], expected)
    U, pullback = eigpool.vjp(eigpool.triu_unvec, v)
    (dv,) = pullback(G)
    np.testing.assert_array_equal(dv, (G + np.swapaxes(G, -1, -2) - G * np.eye(7))[..., iu[0], iu[1]])
    np.testing.assert_allclose(np.sum(U * G), np.sum(v * dv), rtol=1e-13)


def test_covariance_matches_numpy_cov():
    X = np.random.default_rng(17).standard_normal((2, 5, 30))
    S = eigpool.covariance(X)
    for i in range(2):
        np.testing.assert_allclose(S[i], np.cov(X[i], bias=True), rtol=1e-12)


def test_vjp_rejects_arrays_computed_outside_eigpool():
    S = spd(18, DISTINCT)
    with pytest.raises(ValueError, match="computed outside eigpool"):
        eigpool.vjp(lambda S: eigpool.sqrtm(eigpool.covariance(S) + np.eye(6)), S)


def test_vjp_passes_non_array_arguments_through():
    # powm's exponent is a plain float: it gets no cotangent, the matrix gets the gradient of S^(1/2).
    S = spd(20, DISTINCT)
    G = np.random.default_rng(20).standard_normal(S.shape)
    _, pullback = eigpool.vjp(eigpool.powm, S, 0.5)
    dS, dp = pullback(G)
    assert dp is None
    np.testing.assert_allclose(dS, eigpool.vjp(eigpool.sqrtm, S)[1](G)[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("d", [1, 2, 5, 17, 300, 2048])
def test_triangle_index_maps_match_numpy_triu_indices(d):
    # The maps are built from the quadratic formula for a position's row (fixed shapes, no nonzero): checked against
    # np.triu_indices for blocks at the start, the end and the whole matrix.
    from eigpool.triu import _diagonal_mask, _maps, row_offset

    for a, b in ((0, d), (0, min(3, d)), (min(2, d - 1), d)):
        maps, m = _maps(d, a, b), d - a
        k, c = np.triu_indices(m)
        np.testing.assert_array_equal(maps.upper, (k * m + c)[k < b - a])
    np.testing.assert_array_equal(np.flatnonzero(_diagonal_mask(d)), row_offset(d, np.arange(d)))
