"""The core's numerics against independent references: SciPy forwards, the Sylvester equation, finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
from conftest import spd

import eigpool
from eigpool.validation import check_vjp

DISTINCT = [0.7, 1.1, 1.6, 2.3, 3.1, 4.2]
TIED = [1.0, 1.0, 1.0, 2.0, 2.0, 3.5]


def _seb_reference(S):
    Q = sl.sqrtm(S).real
    R = Q @ sl.expm(-S).T
    return (1 + np.linalg.norm(R)) * Q


def _truncate_reference(S, k):
    l, U = np.linalg.eigh(S)
    l[:k] = 0
    return (U * l) @ U.T


# name -> (eigpool function, SciPy/NumPy reference forward)
FUNCTIONS = {
    "sqrtm": (eigpool.sqrtm, lambda S: sl.sqrtm(S).real),
    "invsqrtm": (eigpool.invsqrtm, lambda S: np.linalg.inv(sl.sqrtm(S).real)),
    "powm(0.3)": (lambda S: eigpool.powm(S, 0.3), lambda S: sl.fractional_matrix_power(S, 0.3).real),
    "powm(-1.5)": (lambda S: eigpool.powm(S, -1.5), lambda S: sl.fractional_matrix_power(S, -1.5).real),
    "powm(2)": (lambda S: eigpool.powm(S, 2), lambda S: S @ S),
    "logm": (eigpool.logm, lambda S: sl.logm(S).real),
    "expm_neg": (eigpool.expm_neg, lambda S: sl.expm(-S)),
    "seb": (eigpool.seb, _seb_reference),
    "truncate(2)": (lambda S: eigpool.truncate(S, 2), lambda S: _truncate_reference(S, 2)),
    "spectral(cbrt)": (lambda S: eigpool.spectral(S, np.cbrt, lambda l: np.cbrt(l) / (3 * l), positive=True),
                       lambda S: sl.fractional_matrix_power(S, 1 / 3).real),
    "ns_sqrtm(30)": (lambda S: eigpool.ns_sqrtm(S, iterations=30), lambda S: sl.sqrtm(S).real),
    "ns_invsqrtm(30)": (lambda S: eigpool.ns_invsqrtm(S, iterations=30), lambda S: np.linalg.inv(sl.sqrtm(S).real)),
}
SPECTRAL = [k for k in FUNCTIONS if not k.startswith("ns_")]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_forward_matches_scipy(name):
    fn, ref = FUNCTIONS[name]
    S = spd(1, DISTINCT)
    np.testing.assert_allclose(fn(S), ref(S), rtol=1e-10, atol=1e-12 * np.abs(ref(S)).max())


@pytest.mark.parametrize("name", [*FUNCTIONS, "ns_sqrtm(5)", "ns_invsqrtm(3)", "covariance", "triu_vec", "triu_unvec"])
def test_vjp_matches_finite_differences(name):
    S = spd(2, DISTINCT)
    extra = {
        "ns_sqrtm(5)": (eigpool.ns_sqrtm, S),
        "ns_invsqrtm(3)": (lambda S: eigpool.ns_invsqrtm(S, iterations=3), S),
        "covariance": (eigpool.covariance, np.random.default_rng(0).standard_normal((2, 4, 7))),
        "triu_vec": (eigpool.triu_vec, S),
        "triu_unvec": (eigpool.triu_unvec, np.random.default_rng(0).standard_normal((3, 10))),
    }
    fn, x = extra[name] if name in extra else (FUNCTIONS[name][0], S)
    assert check_vjp(fn, x, step=1e-3).error <= 1e-7


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
    fn = (lambda S: eigpool.truncate(S, 3)) if name.startswith("truncate") else FUNCTIONS[name][0]
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
    fn = FUNCTIONS[name][0]
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


def test_core_runs_on_any_array_api_namespace(xp):
    name, asarray, to_numpy = xp
    S = spd(19, TIED)
    X = np.random.default_rng(19).standard_normal((2, 6, 9))
    pipelines = [lambda S: eigpool.sqrtm(S), lambda S: eigpool.seb(S, truncate=1), lambda S: eigpool.ns_sqrtm(S),
                 lambda S: eigpool.eigh(S, grad="taylor")[0], lambda S: eigpool.logm(S, grad="pade")]
    for fn in pipelines:
        out, pullback = eigpool.vjp(fn, asarray(S))
        ref_out, ref_pullback = eigpool.vjp(fn, S)
        assert type(out) is type(asarray(S))
        np.testing.assert_allclose(np.from_dlpack(out), ref_out, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.from_dlpack(pullback(asarray(np.ones(ref_out.shape)))[0]),
                                   ref_pullback(np.ones(ref_out.shape))[0], rtol=1e-11, atol=1e-13)
    gcp = lambda X: eigpool.triu_vec(eigpool.sqrtm(eigpool.covariance(X)))  # noqa: E731
    out, pullback = eigpool.vjp(gcp, asarray(X))
    ref_out, ref_pullback = eigpool.vjp(gcp, X)
    np.testing.assert_allclose(np.from_dlpack(out), ref_out, rtol=1e-12)
    np.testing.assert_allclose(np.from_dlpack(pullback(asarray(np.ones(ref_out.shape)))[0]),
                               ref_pullback(np.ones(ref_out.shape))[0], rtol=1e-10, atol=1e-13)


def test_vjp_passes_non_array_arguments_through():
    # powm's exponent is a plain float: it gets no cotangent, the matrix gets the gradient of S^(1/2).
    S = spd(20, DISTINCT)
    G = np.random.default_rng(20).standard_normal(S.shape)
    _, pullback = eigpool.vjp(eigpool.powm, S, 0.5)
    dS, dp = pullback(G)
    assert dp is None
    np.testing.assert_allclose(dS, eigpool.vjp(eigpool.sqrtm, S)[1](G)[0], rtol=1e-12, atol=1e-14)
