"""eigpool as an SPD/HPD matrix-function library (issue 13): exponents as arrays with their derivative, expm and the
Frechet derivative against SciPy, the symmetry tolerance on round-off of real computations, floor="raise", and the
bad-input defects (Newton-Schulz on indefinite input and at extreme scales, covariance overflow, the pullback of one
output, the zero matrix). Complex Hermitian input of every spectral function runs in the generic tests (test_ops.py,
rows marked ``complex``); its SciPy and finite-difference checks beyond the table are here."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
import torch
from ops import hpd, spd

import eigpool
from eigpool._checks import symmetry_tolerance
from eigpool.validation._finite_differences import central_difference, richardson

DISTINCT = [0.4, 0.9, 1.7, 3.2]
TIED = [0.8, 0.8, 2.5, 2.5]


def _fd(f, x: np.ndarray, e: np.ndarray) -> float:
    """Richardson-extrapolated central difference of the real scalar f at x along e."""
    value, *_ = richardson(central_difference(lambda xs: f(xs[0]), [x], [e]), 1e-3, 4)
    return float(value)


def _hermitian_direction(rng: np.random.Generator, d: int, complex_: bool) -> np.ndarray:
    e = rng.standard_normal((d, d)) + (1j * rng.standard_normal((d, d)) if complex_ else 0)
    e = e + e.conj().T
    return e / np.linalg.norm(e)


# ---------------------------------------------------------------------------------------------------------------------
# powm: exponents of every kind, one per matrix, and the derivative with respect to the exponent.

@pytest.mark.parametrize("p", [np.float32(0.5), np.float64(0.5), np.int64(2), 2, 0.5, np.asarray(0.5),
                               np.asarray([0.5])], ids=repr)
def test_powm_takes_numpy_scalars_and_arrays(p):
    S = spd(0, DISTINCT)
    expected = sl.fractional_matrix_power(S, float(np.asarray(p).item())).real
    out = eigpool.powm(S, p)
    np.testing.assert_allclose(out.reshape(S.shape) if np.ndim(p) else out, expected, rtol=1e-12, atol=1e-13)


def test_powm_with_one_exponent_per_matrix_and_broadcasting():
    S = np.stack([spd(1, DISTINCT), spd(2, TIED), hpd(3, DISTINCT).real])
    p = np.array([0.5, -1.0, 2.5])
    out = eigpool.powm(S, p)
    for k in range(3):
        np.testing.assert_allclose(out[k], sl.fractional_matrix_power(S[k], p[k]).real, rtol=1e-11, atol=1e-12)
    # One matrix, three exponents: the result has the broadcast batch shape (3, d, d).
    many = eigpool.powm(S[0], p)
    assert many.shape == (3, 4, 4)
    np.testing.assert_allclose(many[1], np.linalg.inv(S[0]), rtol=1e-11)
    with pytest.raises(ValueError, match="powm: the batch shapes"):
        eigpool.powm(S, np.ones(2))


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("spectrum", [DISTINCT, TIED, [1e-300, 0.5, 1.0, 2.0]], ids=["distinct", "tied", "floored"])
def test_exponent_gradient_matches_finite_differences_and_the_formula(complex_, spectrum):
    # d/dp U diag(l^p) U^H = U diag(l^p log l) U^H; eigenvalues below the floor contribute tau^p log tau.
    S = hpd(4, spectrum) if complex_ else spd(4, spectrum)
    rng = np.random.default_rng(4)
    G = rng.standard_normal(S.shape) + (1j * rng.standard_normal(S.shape) if complex_ else 0)
    p = np.asarray(-0.7)
    out, pullback = eigpool.vjp(eigpool.powm, S, p)
    dS, dp = pullback(G)
    assert dp.shape == () and dp.dtype == np.float64
    fd = _fd(lambda q: np.vdot(G, eigpool.powm(S, float(q))).real, np.asarray(-0.7), np.asarray(1.0))
    np.testing.assert_allclose(dp, fd, rtol=1e-8)
    l, U = np.linalg.eigh(S)
    m = np.maximum(l, 4 * np.finfo(float).eps * l.max())
    exact = np.vdot(G, (U * (m ** -0.7 * np.log(m))) @ U.conj().T).real
    np.testing.assert_allclose(dp, exact, rtol=1e-10)
    if spectrum[0] > 1e-3:  # a step of 1e-3 would make the floored spectrum indefinite
        e = _hermitian_direction(rng, 4, complex_)
        fd = _fd(lambda x: np.vdot(G, eigpool.powm(x, -0.7)).real, S, e)
        np.testing.assert_allclose(np.vdot(dS, e).real, fd, rtol=1e-7)


def test_exponent_gradient_of_a_batch_of_exponents_and_of_a_broadcast_one():
    S = np.stack([spd(5, DISTINCT), spd(6, TIED)])
    G = np.random.default_rng(5).standard_normal(S.shape)
    p = np.array([0.3, 1.5])
    _, pullback = eigpool.vjp(eigpool.powm, S, p)
    dp = pullback(G)[1]
    for k in range(2):
        _, one = eigpool.vjp(eigpool.powm, S[k], p[k:k + 1].reshape(()))
        np.testing.assert_allclose(dp[k], one(G[k])[1], rtol=1e-12)
    # A shared exponent (shape ()) receives the sum over the matrices it applies to.
    _, shared = eigpool.vjp(eigpool.powm, S, np.asarray(0.3))
    total = sum(eigpool.vjp(eigpool.powm, S[k], np.asarray(0.3))[1](G[k])[1] for k in range(2))
    np.testing.assert_allclose(shared(G)[1], total, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["real", "complex"])
def test_exponent_tensor_gradcheck(dtype):
    make = hpd if dtype.is_complex else spd
    S = torch.tensor(np.stack([make(7, DISTINCT), make(8, TIED)]), dtype=dtype).requires_grad_(True)
    p = torch.tensor([0.4, -1.3], dtype=torch.float64, requires_grad=True)

    def f(S, p):
        return eigpool.powm((S + (torch.conj_physical(S) if S.is_complex() else S).mT) / 2, p)

    assert torch.autograd.gradcheck(f, (S, p), check_batched_grad=True, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (S, p), check_fwd_over_rev=True)  # exact at the tied spectrum too
    scalar = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)  # a 0-d tensor
    assert torch.autograd.gradcheck(f, (S, scalar))


def test_array_exponents_stay_out_of_the_specification():
    # The array route binds the exponent as an input: the specification is the same object for every exponent.
    import eigpool._spec as spec_module
    from eigpool._divided import POWER_INPUT

    spec = spec_module.resolve_spectral("powm", POWER_INPUT)
    assert hash(spec) == hash(spec_module.resolve_spectral("powm", POWER_INPUT))
    S = spd(9, DISTINCT)
    with pytest.raises(TypeError, match="powm: argument 'p' must be a real number or have a real floating dtype"):
        eigpool.powm(S, np.asarray([1, 2]))
    with pytest.raises(TypeError, match="powm: argument 'p' must be a real number or an array of S's library"):
        eigpool.powm(S, torch.tensor(0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="powm: argument 'p' contains NaN or inf"):
        eigpool.powm(S, np.asarray(np.nan))
    with pytest.raises(TypeError, match="finite real number"):
        eigpool.powm(S, "0.5")


# ---------------------------------------------------------------------------------------------------------------------
# expm and the Frechet derivative.

@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("spectrum", [[-3.0, -0.5, 1.2, 4.0], [0.7, 0.7, 0.7, 2.0], [1.0, 1 + 1e-9, 5.0, 5 + 1e-12]],
                         ids=["distinct", "triple", "near_ties"])
def test_frechet_of_exp_is_scipys_expm_frechet(complex_, spectrum):
    S = hpd(10, spectrum) if complex_ else spd(10, spectrum)
    E = _hermitian_direction(np.random.default_rng(10), 4, complex_)
    expm, frechet = sl.expm_frechet(S, E)
    np.testing.assert_allclose(eigpool.expm(S), expm, rtol=1e-12, atol=1e-13 * np.abs(expm).max())
    np.testing.assert_allclose(eigpool.frechet("exp", S, E), frechet, rtol=1e-10, atol=1e-12 * np.abs(frechet).max())
    np.testing.assert_allclose(eigpool.frechet(eigpool.expm, S, E), frechet, rtol=1e-10,
                               atol=1e-12 * np.abs(frechet).max())


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize(("fn", "options", "f"), [
    ("log", {}, lambda S: sl.logm(S)),
    ("sqrt", {}, lambda S: sl.sqrtm(S)),
    ("invsqrt", {}, lambda S: np.linalg.inv(sl.sqrtm(S))),
    ("power", {"p": -1.7}, lambda S: sl.fractional_matrix_power(S, -1.7)),
    ("exp_neg", {}, lambda S: sl.expm(-S)),
], ids=["log", "sqrt", "invsqrt", "power", "exp_neg"])
def test_frechet_matches_finite_differences_of_scipy(fn, options, f, complex_):
    S = hpd(11, DISTINCT) if complex_ else spd(11, DISTINCT)
    E = _hermitian_direction(np.random.default_rng(11), 4, complex_)
    D = eigpool.frechet(fn, S, E, **options)
    h = 1e-4
    fd = (-f(S + 2 * h * E) + 8 * f(S + h * E) - 8 * f(S - h * E) + f(S - 2 * h * E)) / (12 * h)
    np.testing.assert_allclose(D, fd, rtol=1e-8, atol=1e-9 * np.abs(fd).max())
    np.testing.assert_array_equal(D, D.conj().T)


def test_frechet_of_sqrt_solves_the_sylvester_equation_at_ties():
    # Q = S^(1/2): Q D + D Q = E exactly, at a doubly repeated spectrum too.
    S = spd(12, TIED)
    E = _hermitian_direction(np.random.default_rng(12), 4, False)
    Q = eigpool.sqrtm(S)
    D = eigpool.frechet("sqrt", S, E)
    np.testing.assert_allclose(Q @ D + D @ Q, E, atol=1e-13)


def test_frechet_properties_as_pyriemann_states_them():
    # Linearity, self-adjointness for <A, B> = tr(A B), the identity reference; one S for a batch of directions.
    rng = np.random.default_rng(13)
    S = hpd(13, DISTINCT)
    X, Y = (_hermitian_direction(rng, 4, True) for _ in range(2))
    for fn in ("log", "exp"):
        DX, DY = eigpool.frechet(fn, S, X), eigpool.frechet(fn, S, Y)
        np.testing.assert_allclose(eigpool.frechet(fn, S, 0.3 * X + 0.6 * Y), 0.3 * DX + 0.6 * DY, atol=1e-13)
        np.testing.assert_allclose(np.trace(DX @ Y), np.trace(X @ DY), rtol=1e-12)
        np.testing.assert_allclose(eigpool.frechet(fn, np.eye(4, dtype=complex), X), (np.e if fn == "exp" else 1.0) * X,
                                   atol=1e-14)
        real = _hermitian_direction(rng, 4, False)  # a real direction of a complex S
        np.testing.assert_allclose(eigpool.frechet(fn, S, real), eigpool.frechet(fn, S, real.astype(complex)))
        batch = eigpool.frechet(fn, S, np.stack([X, Y]))
        np.testing.assert_allclose(batch, np.stack([DX, DY]), atol=1e-14)


def test_frechet_gradient_of_a_real_direction_of_a_complex_matrix():
    S = torch.tensor(hpd(34, TIED)).requires_grad_(True)
    E = torch.tensor(_hermitian_direction(np.random.default_rng(34), 4, False)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda S, E: eigpool.frechet("log", (S + torch.conj_physical(S).mT) / 2, E),
                                    (S, E))
    with pytest.raises(ValueError, match="E complex only for a complex S"):
        eigpool.frechet("log", spd(34, DISTINCT), hpd(35, DISTINCT))


def test_frechet_gradients_in_s_and_e():
    S = torch.tensor(np.stack([spd(14, DISTINCT), spd(15, TIED)])).requires_grad_(True)
    E = torch.tensor(_hermitian_direction(np.random.default_rng(14), 4, False)).requires_grad_(True)
    for fn in ("log", "exp", "sqrt"):
        assert torch.autograd.gradcheck(lambda S, E, fn=fn: eigpool.frechet(fn, (S + S.mT) / 2, E), (S, E),
                                        check_forward_ad=True)
    # NumPy: the direction may be a constant of the traced function (only the first input must come from eigpool).
    S0 = spd(16, DISTINCT)
    E0 = E.detach().numpy()
    out, pullback = eigpool.vjp(lambda S: eigpool.frechet("log", S, E0), S0)
    G = np.random.default_rng(16).standard_normal(S0.shape)
    e = _hermitian_direction(np.random.default_rng(17), 4, False)
    fd = _fd(lambda x: np.sum(G * eigpool.frechet("log", x, E0)), S0, e)
    np.testing.assert_allclose(np.sum(pullback(G)[0] * e), fd, rtol=1e-7)


def test_expm_divided_difference_has_no_cancellation_or_early_overflow():
    import mpmath

    from eigpool._divided import SPECTRAL_FUNCTIONS

    dd = SPECTRAL_FUNCTIONS["exp"].dd
    mpmath.mp.dps = 50
    for a, b in [(1.0, 1.0 + 1e-12), (-30.0, -30.0 + 1e-9), (700.0, 699.0), (2.0, 2.0)]:
        exact = mpmath.exp(a) if a == b else (mpmath.exp(a) - mpmath.exp(b)) / (mpmath.mpf(a) - b)
        np.testing.assert_allclose(dd(np, np.float64(a), np.float64(b)), float(exact), rtol=4e-15)
    assert np.isfinite(eigpool.expm(np.diag([709.0, 708.0])).max())


# ---------------------------------------------------------------------------------------------------------------------
# The symmetry tolerance ([Note: symmetry tolerance] in eigpool._checks).

def test_round_off_of_computations_is_accepted_as_symmetric():
    rng = np.random.default_rng(18)
    # The two examples. 1: a difference of logarithms (eigpool's results are exactly symmetric, so their
    # difference is too).
    X = spd(19, [10.0, 20.0, 50.0, 100.0])
    T = eigpool.logm(X + 1e-9 * np.eye(4)) - eigpool.logm(X)
    np.testing.assert_array_equal(T, T.T)
    np.testing.assert_allclose(eigpool.expm_neg(T), sl.expm(-T), rtol=1e-12, atol=1e-15)
    # 2: A^(-1/2) B A^(-1/2) with cond(A) = 1e10 and B close to A: the terms are 1e10 times the result.
    A = spd(20, np.logspace(-10, 0, 6).tolist())
    B = A + 1e-12 * spd(21, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    isA = eigpool.invsqrtm(A)
    C = isA @ B @ isA
    asymmetry = np.abs(C - C.T).max() / np.abs(C).max()
    assert 1.5e-8 < asymmetry < symmetry_tolerance(np, C.dtype)  # above main's sqrt(eps) tolerance
    np.testing.assert_allclose(eigpool.powm(C, 0.5), sl.sqrtm((C + C.T) / 2).real, rtol=1e-6, atol=1e-9)
    # A general matrix, and a product of two non-commuting symmetric matrices, are still refused.
    for bad in (rng.standard_normal((4, 4)) + 4 * np.eye(4), spd(22, DISTINCT) @ spd(23, DISTINCT)):
        with pytest.raises(ValueError, match="must be symmetric"):
            eigpool.sqrtm(bad)
    with pytest.raises(ValueError, match="must be Hermitian"):
        eigpool.sqrtm(hpd(24, DISTINCT) + 1e-3j * np.eye(4))  # an imaginary diagonal


def test_results_are_computed_from_the_hermitian_part():
    # The accepted round-off asymmetry is removed, not half-read: F(S) = F((S + S^H) / 2), value and gradient.
    S = spd(25, DISTINCT)
    K = np.triu(np.full((4, 4), 1e-6), 1)
    K = K - K.T
    np.testing.assert_array_equal(eigpool.logm(S + K), eigpool.logm(S))
    assert symmetry_tolerance(np, np.float64) == np.finfo(np.float64).eps ** 0.25


# ---------------------------------------------------------------------------------------------------------------------
# floor="raise": an error for singular input, on request; the floor stays the default.

@pytest.mark.parametrize("fn", [eigpool.logm, eigpool.invsqrtm, lambda S, **o: eigpool.powm(S, -1.0, **o),
                                lambda S, **o: eigpool.powm(S, np.asarray(-1.0), **o)],
                         ids=["logm", "invsqrtm", "powm(-1)", "powm(array -1)"])
def test_floor_raise_refuses_singular_input(fn):
    singular = spd(26, [0.0, 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="is singular to working precision.*floor='raise'"):
        fn(singular, floor="raise")
    assert np.all(np.isfinite(fn(singular)))  # the default floors
    regular = spd(27, [1e-6, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(fn(regular, floor="raise"), fn(regular))
    with pytest.raises(ValueError, match="singular"):
        fn(hpd(28, [0.0, 1.0, 2.0, 3.0]), floor="raise")
    assert repr(eigpool.spectral_spec("log", floor="raise").floor) == "Floor('raise')"


def test_logm_of_a_singular_matrix_is_the_documented_floor_by_default():
    # The default: eigenvalue 0 becomes d * eps * max|l| (log: about -33.6 for d = 4 and max 3).
    l = np.linalg.eigvalsh(eigpool.logm(spd(29, [0.0, 1.0, 2.0, 3.0])))
    np.testing.assert_allclose(l[0], np.log(4 * np.finfo(float).eps * 3.0), rtol=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input the core used to get wrong.

def test_newton_schulz_refuses_indefinite_input_with_a_positive_trace():
    for fn in (eigpool.ns_sqrtm, eigpool.ns_invsqrtm):
        with pytest.raises(ValueError, match="ns_.*must be positive semi-definite"):
            fn(np.diag([3.0, -1.0]))  # was diag(1.73, -2.85e9)
        with pytest.raises(ValueError, match="must be positive semi-definite"):
            fn(torch.diag(torch.tensor([3.0, 1.0, -0.5], dtype=torch.float64)))
    rank_one = np.outer([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])  # singular PSD: accepted
    assert np.all(np.isfinite(eigpool.ns_sqrtm(rank_one)))


@pytest.mark.parametrize("inverse", [False, True], ids=["ns_sqrtm", "ns_invsqrtm"])
@pytest.mark.parametrize("scale", [2.0**530, 2.0**-530, 2.0**830, 2.0**-830], ids=lambda c: f"2^{np.log2(c):.0f}")
def test_newton_schulz_backward_at_extreme_scales(scale, inverse):
    # The iteration is homogeneous: Q(c S) = c^(+-1/2) Q(S), so its VJP at c S is c^(+-1/2 - 1) times the one at S
    # (exactly, for c a power of 2); t^2 overflowed beyond 1e154 and underflowed below 1e-154.
    fn = eigpool.ns_invsqrtm if inverse else eigpool.ns_sqrtm
    S = spd(30, DISTINCT)
    G = np.random.default_rng(30).standard_normal(S.shape)
    power = (-0.5 if inverse else 0.5) - 1
    if abs(np.log2(scale) * power) > 1000:
        pytest.skip("the gradient itself is not representable at this scale")
    _, pullback = eigpool.vjp(fn, scale * S)
    np.testing.assert_allclose(pullback(G)[0], scale**power * eigpool.vjp(fn, S)[1](G)[0], rtol=1e-13)


def test_features_that_overflow_the_covariance_get_that_error():
    X = np.random.default_rng(31).standard_normal((2, 3, 5))
    for fn in (eigpool.covariance, eigpool.pooled, lambda X: eigpool.pooled(X, path="gram")):
        with np.errstate(over="ignore", invalid="ignore"), pytest.raises(ValueError, match="covariance of argument "
                                                                         "'X' overflows float64"):
            fn(1e160 * X)
    # Scales whose covariance is representable work, and the square root scales back.
    np.testing.assert_allclose(eigpool.pooled(1e150 * X), 1e150 * eigpool.pooled(X), rtol=1e-12)


def test_pullback_takes_a_one_tuple_for_a_single_output():
    S = spd(32, DISTINCT)
    G = np.random.default_rng(32).standard_normal(S.shape)
    _, pullback = eigpool.vjp(eigpool.sqrtm, S)
    np.testing.assert_array_equal(pullback((G,))[0], pullback(G)[0])
    with pytest.raises(AttributeError):
        pullback((G, G))


@pytest.mark.parametrize("fn", [eigpool.invsqrtm, lambda S: eigpool.powm(S, -0.5), eigpool.logm],
                         ids=["invsqrtm", "powm(-0.5)", "logm"])
def test_gradient_at_the_zero_matrix_is_the_zero_subgradient(fn):
    # A sample whose channels are all dead: every eigenvalue is below the floor, so the subgradient is 0 (it was NaN).
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        out, pullback = eigpool.vjp(fn, np.zeros((3, 3)))
        (dS,) = pullback(np.ones((3, 3)))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(dS, np.zeros((3, 3)))
    S = torch.zeros(2, 3, 3, dtype=torch.float64, requires_grad=True)
    fn(S).sum().backward()
    torch.testing.assert_close(S.grad, torch.zeros_like(S), rtol=0, atol=0)
    X = torch.zeros(2, 3, 5, dtype=torch.float64, requires_grad=True)  # dead features through pooled
    eigpool.pooled(X, "invsqrt").sum().backward()
    torch.testing.assert_close(X.grad, torch.zeros_like(X), rtol=0, atol=0)


def test_hermitian_input_in_single_precision_computes_in_double():
    S = hpd(33, DISTINCT)
    t = torch.tensor(S, dtype=torch.complex64)
    out = eigpool.sqrtm(t)
    assert out.dtype == torch.complex64
    np.testing.assert_allclose(out.numpy(), sl.sqrtm(S.astype(np.complex64).astype(np.complex128)), rtol=2e-6)
    with pytest.raises(TypeError, match="covariance: argument 'X' must have a real floating dtype"):
        eigpool.covariance(S)
