"""Trace-scaled spectral functions ([Note: trace scaling] in eigpool.spectral): the Newton-Schulz scalar map as an
exact spectral function and the shifted square root, against independent references (exact rational arithmetic,
the Newton-Schulz iteration and its hand-derived backward, the square root of the explicitly shifted matrix). The
table tests (tests/ops.py) check both against NumPy references, finite differences and every transform."""

import re
from fractions import Fraction

import numpy as np
import pytest
from conftest import spd

import eigpool
from eigpool.gram import pooled_from_spec

torch = pytest.importorskip("torch")

NS5 = eigpool.spectral_spec(eigpool.ns_polynomial(5), trace_scale=True)


def _ns_scalar(a: Fraction, n: int) -> Fraction:
    z = Fraction(1)
    for _ in range(n):
        z = z * (3 - a * z * z) / 2
    return a * z


@pytest.mark.parametrize("n", [1, 5, 8])
def test_ns_polynomial_divided_differences_against_exact_rationals(n):
    fn = eigpool.ns_polynomial(n)
    rng = np.random.default_rng(n)
    a = np.concatenate([rng.uniform(0, 1, 20), [0.0, 0.3, 0.7, 1.0]])
    b = np.concatenate([a[:8] + 1e-9, a[8:16] * (1 + 1e-13), rng.uniform(0, 1, 4), [0.0, 0.3, 0.7 + 1e-15, 0.2]])
    got = fn.dd(np, a, b)
    for x, y, g in zip(a, b, got, strict=True):
        fx, fy = Fraction(float(x)), Fraction(float(y))
        if fx != fy:
            exact = (_ns_scalar(fx, n) - _ns_scalar(fy, n)) / (fx - fy)
        else:  # the derivative, by the exact difference quotient at a rational step far below float resolution
            h = Fraction(1, 10**40)
            exact = (_ns_scalar(fx + h, n) - _ns_scalar(fx, n)) / h
        assert abs(g - float(exact)) <= 1e-13 * max(1.0, abs(float(exact))), (x, y)
    assert fn.dd(np, 0.0, 0.0) == pytest.approx(1.5**n, rel=1e-15)  # the finite slope at 0
    assert np.array_equal(fn.dd(np, a, b), fn.dd(np, b, a))  # symmetrised


def _dead_channel_covariances(dtype=torch.float64):
    """Covariances of ReLU features with 3 dead channels and fewer positions than channels: a triple zero
    eigenvalue and more zeros from the rank deficiency."""
    g = torch.Generator().manual_seed(0)
    X = torch.relu(torch.randn(4, 8, 5, generator=g, dtype=dtype))
    X[:, :3] = 0
    return eigpool.covariance(X)


def test_ns_polynomial_is_the_newton_schulz_square_root_with_its_backward():
    # The Newton-Schulz iteration and its hand-derived backward (eigpool.newton_schulz) are an independent
    # computation of the same function: no eigendecomposition, no divided differences.
    S = _dead_channel_covariances().requires_grad_()
    G = torch.randn(S.shape, generator=torch.Generator().manual_seed(1), dtype=S.dtype)
    # A symmetric cotangent: the iteration is a polynomial in S itself, the spectral function one of (S + S^T) / 2,
    # so the two gradients agree on symmetric directions (the ones a symmetric S can move in).
    G = G + G.mT
    ns, spectral = eigpool.ns_sqrtm(S, iterations=5), eigpool.matrix_function(S, NS5)
    assert torch.allclose(ns, spectral, rtol=0, atol=1e-13)
    (g_ns,) = torch.autograd.grad(ns, S, G)
    (g_spectral,) = torch.autograd.grad(spectral, S, G)
    assert torch.isfinite(g_spectral).all()
    assert torch.allclose(g_ns, g_spectral, rtol=0, atol=1e-12 * g_ns.abs().max())


def test_shifted_sqrt_is_the_root_of_the_shifted_matrix_less_the_shift():
    c = 0.05
    spec = eigpool.spectral_spec(eigpool.shifted_sqrt(c), trace_scale=True)
    S = _dead_channel_covariances().requires_grad_()
    G = torch.randn(S.shape, generator=torch.Generator().manual_seed(2), dtype=S.dtype)
    F = eigpool.matrix_function(S, spec)
    eye = torch.eye(S.shape[-1], dtype=S.dtype)
    t = S.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    # Reference: the plain square root of S + c tr(S) I (positive definite) less sqrt(c tr(S)) I, autograd through
    # the shift.
    ref = eigpool.sqrtm(S + c * t * eye) - torch.sqrt(c * t) * eye
    assert torch.allclose(F, ref, rtol=0, atol=1e-13)
    (g,) = torch.autograd.grad(F, S, G)
    (g_ref,) = torch.autograd.grad(ref, S, G)
    assert torch.allclose(g, g_ref, rtol=0, atol=1e-12 * g_ref.abs().max())
    # The slope at the dead channels is finite and nonzero: no floor cuts their gradient.
    assert g[:, 0, 0].abs().min() > 0


def test_trace_scaled_sqrt_is_sqrtm():
    # Positive definite: at singular S the eigenvalue floor is held fixed in the units of S for sqrtm and of S / tr S
    # here, two subgradients that differ by O(sqrt(floor)) (1e-9 for a double zero eigenvalue in float64).
    S = torch.from_numpy(spd(3, [1e-4, 1e-4, 1e-3, 2.0, 5.0])).requires_grad_()
    spec = eigpool.spectral_spec("sqrt", trace_scale=True)
    G = torch.randn(5, 5, generator=torch.Generator().manual_seed(3), dtype=S.dtype)
    F, ref = eigpool.matrix_function(S, spec), eigpool.sqrtm(S)
    assert torch.allclose(F, ref, rtol=0, atol=1e-13)
    assert torch.allclose(torch.autograd.grad(F, S, G)[0], torch.autograd.grad(ref, S, G)[0], rtol=1e-10, atol=1e-12)


def test_zero_matrix_gives_zero_and_a_zero_gradient():
    S = torch.zeros(2, 3, 3, dtype=torch.float64, requires_grad=True)
    F = eigpool.matrix_function(S, NS5)
    assert torch.equal(F, torch.zeros_like(F))
    (g,) = torch.autograd.grad(F, S, torch.ones_like(F))
    assert torch.equal(g, torch.zeros_like(g))


def test_indefinite_input_is_refused():
    S = np.diag([2.0, -0.5, 1.0])
    with pytest.raises(ValueError, match="positive semi-definite|PSD|negative"):
        eigpool.matrix_function(S, NS5)


@pytest.mark.parametrize("call, message", [
    (lambda: eigpool.ns_polynomial(0), "iterations must be an integer >= 1"),
    (lambda: eigpool.ns_polynomial(True), "iterations must be an integer >= 1"),
    (lambda: eigpool.ns_polynomial(2.0), "iterations must be an integer >= 1"),
    (lambda: eigpool.shifted_sqrt(0.0), "shift must be a finite number > 0"),
    (lambda: eigpool.shifted_sqrt(-1.0), "shift must be a finite number > 0"),
    (lambda: eigpool.shifted_sqrt(float("inf")), "shift must be a finite number > 0"),
    (lambda: eigpool.spectral_spec("sqrt", trace_scale="yes"), "trace_scale must be True or False"),
    (lambda: eigpool.spectral_spec("sqrt", trace_scale=True, seb=True), "do not combine"),
    (lambda: pooled_from_spec(np.random.default_rng(0).standard_normal((4, 3)), NS5, path="gram"),
     "path='gram' takes a function with positive=True and no trace scaling"),
])
def test_bad_options_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_layers_take_trace_scaled_functions_on_the_dense_route():
    from eigpool.backends.torch import GCPHead

    torch.manual_seed(0)
    x = torch.randn(2, 6, 2, 2)  # N = 4 < d = 5: path "auto" would take the Gram route for sqrt
    head = GCPHead(6, reduction=5, fn=eigpool.ns_polynomial(5), trace_scale=True)
    dense = GCPHead(6, reduction=5, method="newton_schulz")
    dense.load_state_dict(head.state_dict())
    assert torch.allclose(head(x), dense(x), rtol=0, atol=1e-6)
    assert "trace_scale=True" in repr(head)
    with pytest.raises(ValueError, match="trace_scale apply to method='eigen' only"):
        GCPHead(6, reduction=5, method="newton_schulz", trace_scale=True)


def test_shifted_sqrt_has_no_cancellation_at_small_eigenvalues():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    fn = eigpool.shifted_sqrt(0.5)
    l = np.array([1e-30, 1e-16, 1e-10, 1e-4, 0.3, 7.0])
    exact = [float(mpmath.sqrt(mpmath.mpf(float(x)) + mpmath.mpf(0.5)) - mpmath.sqrt(mpmath.mpf(0.5))) for x in l]
    assert np.allclose(fn.f(np, l), exact, rtol=4e-16, atol=0)  # sqrt(l + c) - sqrt(c) loses all digits below 1e-16
    slope = [float(1 / (2 * mpmath.sqrt(mpmath.mpf(float(x)) + mpmath.mpf(0.5)))) for x in l]
    assert np.allclose(fn.df(np, l), slope, rtol=4e-16, atol=0)
