"""Property-based tests over designed spectra (eigpool.validation.strategies)."""

from __future__ import annotations

import numpy as np
import scipy.linalg as sl
from hypothesis import given, settings
from hypothesis import strategies as st

import eigpool
from eigpool.validation.strategies import spd_matrices

KINDS = st.sampled_from(["distinct", "clustered", "repeated", "ill_conditioned"])
SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(spd_matrices(st.integers(2, 8), KINDS), st.integers(0, 2**16))
def test_sqrtm_vjp_solves_the_sylvester_equation_on_every_spectrum(S, seed):
    G = np.random.default_rng(seed).standard_normal(S.shape)
    Q, pullback = eigpool.vjp(eigpool.sqrtm, S)
    (dS,) = pullback(G)
    scale = np.abs(S).max()
    np.testing.assert_allclose(Q @ Q, S, atol=1e-12 * scale)
    # Independent reference: Bartels-Stewart on Q X + X Q = sym(G); conditioned by 1 / (2 sqrt(l_min)).
    ref = sl.solve_sylvester(Q, Q, (G + G.T) / 2)
    np.testing.assert_allclose(dS, ref, atol=1e-9 * np.abs(ref).max())


@SETTINGS
@given(spd_matrices(st.integers(2, 8), KINDS), st.integers(0, 2**16))
def test_logm_gradient_is_symmetric_finite_and_self_adjoint(S, seed):
    # The Loewner VJP G -> U (L o U^T G U) U^T is a symmetric linear map: <A, vjp(B)> = <vjp(A), B>.
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((2, *S.shape))
    A, B = A + A.T, B + B.T
    _, pullback = eigpool.vjp(eigpool.logm, S)
    (dA,), (dB,) = pullback(A), pullback(B)
    assert np.all(np.isfinite(dA))
    np.testing.assert_allclose(dA, dA.T, atol=1e-13 * np.abs(dA).max())
    assert abs(np.sum(A * dB) - np.sum(dA * B)) <= 1e-9 * np.linalg.norm(dA) * np.linalg.norm(B)


@SETTINGS
@given(spd_matrices(st.integers(4, 12), "singular", samples=3), st.integers(0, 2**16))
def test_singular_inputs_give_finite_bounded_gradients(S, seed):
    G = np.random.default_rng(seed).standard_normal(S.shape)
    for fn in (eigpool.sqrtm, eigpool.seb):
        out, pullback = eigpool.vjp(fn, S)
        (dS,) = pullback(G)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(dS))
