"""The PyTorch adapter: dispatch, dtype and device policy, gradcheck at distinct and exactly repeated eigenvalues,
gradgradcheck (second divided differences at repeated eigenvalues), no_grad, and genericity over primitives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.linalg as sl
import torch
from conftest import spd
from ops import SPECTRA

import eigpool
from eigpool import Primitive, bind

F64 = torch.float64


def sym(A: torch.Tensor) -> torch.Tensor:
    return (A + A.mT) / 2


def tensor(a, **kw) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=F64, **kw)


def test_forward_mode_is_the_exact_derivative_at_a_fourfold_eigenvalue():
    # sqrt'(c I)[E] = E / (2 sqrt(c)) and log'(c I)[E] = E / c, where autodiff through eigh divides 0 by 0.
    fw = torch.autograd.forward_ad
    E = sym(torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(0)))
    with fw.dual_level():
        S = fw.make_dual(4 * torch.eye(4, dtype=F64), E)
        torch.testing.assert_close(fw.unpack_dual(eigpool.sqrtm(S)).tangent, E / 4, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(fw.unpack_dual(eigpool.logm(S)).tangent, E / 4, rtol=1e-14, atol=1e-15)
        t = fw.unpack_dual(eigpool.triu_vec(eigpool.sqrtm(S))).tangent
    assert t.shape == (10,) and t.dtype == F64


FORWARD_OVER_REVERSE = {
    "sqrtm": (eigpool.sqrtm, (6, 6)),
    "logm(sym)": (lambda S: eigpool.logm(sym(S)), (6, 6)),
    "ns_sqrtm": (eigpool.ns_sqrtm, (6, 6)),
    "pooled(gram, triu)": (lambda X: eigpool.pooled(X, path="gram", triu=True), (2, 6, 4)),
}


@pytest.mark.parametrize("name", FORWARD_OVER_REVERSE)
def test_forward_over_reverse_hessian_vector_products(name):
    # d/dt of the gradient <w, f(x + t v)> by forward mode through the backward, against central differences.
    f, shape = FORWARD_OVER_REVERSE[name]
    gen = torch.Generator().manual_seed(2)
    P = torch.randn(shape, dtype=F64, generator=gen)
    P = P @ P.mT + torch.eye(6, dtype=F64) if len(shape) == 2 else P
    V = torch.randn(shape, dtype=F64, generator=gen)
    V = sym(V) if len(shape) == 2 else V
    W = torch.randn(f(P).shape, dtype=F64, generator=gen)

    def gradient(x):
        x = x.clone().requires_grad_(True)
        return torch.autograd.grad(f(x), x, W)[0]

    fw = torch.autograd.forward_ad
    with fw.dual_level():
        x = fw.make_dual(P.clone(), V).requires_grad_(True)
        (g,) = torch.autograd.grad(f(x), x, W, create_graph=True)
        hvp = fw.unpack_dual(g).tangent
    fd = (gradient(P + 1e-6 * V) - gradient(P - 1e-6 * V)) / 2e-6
    torch.testing.assert_close(hvp, fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))


def test_forward_mode_through_covariance_the_gram_route_and_float32():
    X = torch.randn(2, 6, 4, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    for f in (eigpool.covariance, lambda X: eigpool.pooled(X, path="gram", triu=True),
              lambda X: eigpool.pooled(X, path="gram", seb=True),
              lambda X: eigpool.triu_unvec(X.flatten(-2)[..., :21])):
        assert torch.autograd.gradcheck(f, (X,), check_forward_ad=True)
    fw = torch.autograd.forward_ad
    with fw.dual_level():
        y = eigpool.sqrtm(fw.make_dual(torch.eye(3), torch.ones(3, 3)))
        assert fw.unpack_dual(y).tangent.dtype == torch.float32


def test_gradcheck_eigenvectors_at_distinct_eigenvalues():
    # A sign-invariant function of the eigenvectors: U diag(w) U^T.
    S = tensor(spd(4, SPECTRA["distinct"]), requires_grad=True)
    w = torch.arange(1.0, 5.0, dtype=F64)

    def f(A):
        U = eigpool.eigh(sym(A)).eigenvectors
        return (U * w) @ U.mT

    assert torch.autograd.gradcheck(f, (S,))


def test_gradcheck_covariance_and_triu_unvec():
    X = torch.randn(2, 3, 7, dtype=F64, requires_grad=True)
    v = torch.randn(2, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(eigpool.covariance, (X,))
    assert torch.autograd.gradcheck(eigpool.triu_unvec, (v,))


# Primitives without a second-order rule: double backward by recomputing the forward with torch autograd.
RECOMPUTED = {
    "sqrtm(grad=taylor)": lambda S: eigpool.sqrtm(S, grad="taylor", degree=20),
    "sqrtm(grad=pade)": lambda S: eigpool.sqrtm(S, grad="pade"),
    "sqrtm(truncate=1)": lambda S: eigpool.sqrtm(S, truncate=1),
    "eigh(|eigenvectors|)": lambda S: eigpool.eigh(S).eigenvectors.abs(),
    "ns_sqrtm": eigpool.ns_sqrtm,
    "triu_vec": eigpool.triu_vec,
}


@pytest.mark.parametrize("name", RECOMPUTED)
def test_gradgradcheck_through_the_generic_recomputation(name):
    S = tensor(spd(5, SPECTRA["distinct"]), requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda A: RECOMPUTED[name](sym(A)), (S,))


def _mp_dd2(f, a, b, c):
    """f[a, b, c] in 60-digit arithmetic (mpmath): the recurrence, with derivatives where arguments coincide."""
    import mpmath

    with mpmath.workdps(60):
        x, y, z = sorted(mpmath.mpf(float(v)) for v in (a, b, c))
        if x == z:
            return float(mpmath.diff(f, x, 2) / 2)

        def dd(p, q):
            return mpmath.diff(f, p) if p == q else (f(q) - f(p)) / (q - p)

        return float((dd(y, z) - dd(x, y)) / (z - x))


def _mp(name):
    import mpmath

    return {"sqrt": mpmath.sqrt, "invsqrt": lambda x: 1 / mpmath.sqrt(x), "log": mpmath.log,
            "exp_neg": lambda x: mpmath.exp(-x), "power(-0.7)": lambda x: x ** mpmath.mpf(-0.7)}[name]


@pytest.mark.parametrize("name", ["sqrt", "invsqrt", "log", "exp_neg", "power(-0.7)"])
def test_second_divided_differences_match_mpmath_at_ties_near_ties_and_far(name):
    from array_api_compat import numpy as xnp

    from eigpool._divided import SPECTRAL_FUNCTIONS, power

    fn = power(-0.7) if name == "power(-0.7)" else SPECTRAL_FUNCTIONS[name]

    rng = np.random.default_rng(0)
    for _ in range(30):
        base = rng.uniform(0.2, 4.0)
        offsets = 10.0 ** rng.uniform(-13, 0.3, 3) * rng.choice([0.0, 1.0], 3)
        a, b, c = base * (1 + offsets)
        got = float(fn.dd2(xnp, np.array(a), np.array(b), np.array(c)))
        ref = _mp_dd2(_mp(name), a, b, c)
        assert abs(got - ref) <= 1e-11 * abs(ref), (a, b, c, got, ref)


def test_second_derivative_of_sqrtm_at_a_scalar_matrix_is_the_closed_form():
    # S = c I: sqrt(cI + E) = sqrt(c) (I + E/(2c) - E^2/(8c^2) + ...), so D^2 sqrt(S)[H, K] = -(HK + KH) / (8 c^(3/2))
    # and, for L = <W, Dsqrt(S)[H]> with symmetric H and W, dL/dS = -(HW + WH) / (8 c^(3/2)).
    c = 2.0
    rng = np.random.default_rng(0)
    H, W = (tensor(sym(torch.tensor(rng.standard_normal((4, 4))))) for _ in range(2))
    S = (c * torch.eye(4, dtype=F64)).requires_grad_(True)
    (g,) = torch.autograd.grad(eigpool.sqrtm(S), S, H, create_graph=True)
    (gg,) = torch.autograd.grad(g, S, W)
    expected = -(H @ W + W @ H) / (8 * c**1.5)
    torch.testing.assert_close(sym(gg), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [eigpool.sqrtm, eigpool.logm, eigpool.invsqrtm])
def test_second_order_on_a_floored_spectrum_matches_finite_differences_of_the_gradient(fn):
    # [Note: spectral second order] across the floor: a relative floor of 0.1 clamps the eigenvalue 0.05 (and two
    # more below it) to 0.1 * 3 = 0.3; finite differences of the first-order VJP (tau held fixed, as the subgradient
    # does: the largest eigenvalue's direction is left out of the perturbation) against gradgradcheck's analytic one.
    S = tensor(spd(7, [0.01, 0.02, 0.05, 1.0, 2.0, 3.0]), requires_grad=True)
    S0 = S.detach().clone()  # gradgradcheck perturbs S in place
    U = torch.linalg.eigh(S0)[1]
    P = torch.eye(6, dtype=F64) - U[:, -1:] @ U[:, -1:].mT  # keep max|l| fixed: tau = 0.1 max|l| is then constant
    f = lambda A: fn(sym(P @ A @ P) + (S0 - P @ S0 @ P), floor=0.1)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (S,), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_is_kept_and_the_math_runs_in_float64(dtype):
    S = spd(8, [0.5, 1.0, 2.0, 4.0])
    ref = sl.sqrtm(S).real
    x = torch.tensor(S).to(dtype)
    out = eigpool.sqrtm(x)
    assert out.dtype == dtype and out.device == x.device
    # The only rounding left is the input's and the output's, each to the input dtype.
    exact = np.real(sl.sqrtm(x.double().numpy()))
    tol = (2 * torch.finfo(dtype).eps + 1e-14) * np.abs(exact).max()
    assert np.abs(out.double().numpy() - exact).max() <= tol
    assert np.abs(out.double().numpy() - ref).max() <= 10 * tol


def test_compute_dtype_is_configurable():
    S = torch.tensor(spd(9, np.geomspace(1e-3, 1.0, 6)), dtype=torch.float32)
    wide = eigpool.sqrtm(S)
    narrow = eigpool.sqrtm(S, compute_dtype=None)
    exact = torch.tensor(np.real(sl.sqrtm(S.double().numpy())))
    assert wide.dtype == narrow.dtype == torch.float32
    assert (wide.double() - exact).abs().max() < (narrow.double() - exact).abs().max()
    torch.testing.assert_close(wide, eigpool.sqrtm(S.double()).float(), rtol=0, atol=0)


def test_gradients_keep_the_input_dtype():
    x = torch.randn(2, 4, 30, dtype=torch.float32, requires_grad=True)
    eigpool.triu_vec(eigpool.sqrtm(eigpool.covariance(x))).sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_values_and_gradients_match_the_numpy_backend():
    S = spd(10, SPECTRA["triple"])
    G = np.random.default_rng(1).standard_normal((4, 4))
    out, pullback = eigpool.vjp(eigpool.invsqrtm, S)
    (ref_grad,) = pullback(G)
    x = tensor(S, requires_grad=True)
    y = eigpool.invsqrtm(x)
    y.backward(tensor(G))
    np.testing.assert_allclose(y.detach().numpy(), out, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=1e-12, atol=1e-12)


def test_no_grad_and_inputs_without_grad_build_no_graph():
    S = tensor(spd(11, SPECTRA["distinct"]))
    assert eigpool.sqrtm(S).grad_fn is None
    with torch.no_grad():
        y = eigpool.sqrtm(S.clone().requires_grad_(True))
    assert y.grad_fn is None and not y.requires_grad
    torch.testing.assert_close(y, eigpool.sqrtm(S), rtol=0, atol=0)


def test_bad_input_is_rejected_with_the_argument_named():
    with pytest.raises(ValueError, match="'S' must be symmetric"):
        eigpool.sqrtm(torch.randn(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="NaN or inf"):
        eigpool.sqrtm(torch.full((2, 2), float("nan"), dtype=F64))


# A primitive defined here, with no torch code: the generic adapter must make it differentiable as it stands.
def _scale_forward(xp, x, w, *, spec):
    factor = 2.0 if w is None else w
    return (x**spec.power * factor,), (x, factor)


def _scale_vjp(xp, res, g, *, spec):
    x, factor = res
    return (g * spec.power * x ** (spec.power - 1) * factor, None)


@dataclass(frozen=True)
class _ScaleSpec:
    power: int
    compute_dtype: str | None = None


scale_p = Primitive("test_scale", _scale_forward, _scale_vjp, differentiable=(0,))


def test_a_new_primitive_is_differentiable_without_torch_code():
    x = torch.rand(3, 2, dtype=F64) + 0.5
    x.requires_grad_(True)
    cube = lambda x: bind(scale_p, x, None, spec=_ScaleSpec(3))[0]  # noqa: E731
    assert torch.autograd.gradcheck(cube, (x,), check_batched_grad=True, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(cube, (x,))
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(lambda x: cube(x).sum()))(x), 6 * x.detach() ** 2)
    w = torch.full((3, 2), 0.5, dtype=F64, requires_grad=True)
    (y,) = bind(scale_p, x, w, spec=_ScaleSpec(2))
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach() * 0.5)
    assert w.grad is None  # not a differentiable input of the primitive


def test_residuals_are_saved_not_kept_alive_by_a_cycle():
    import gc
    import weakref

    S = tensor(spd(12, SPECTRA["distinct"]), requires_grad=True)
    y = eigpool.eigh(S).eigenvalues
    ref = weakref.ref(y.grad_fn)
    del y
    gc.disable()
    try:
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the device-preservation test needs a GPU")
def test_cuda_tensors_stay_on_their_device():
    S = tensor(spd(13, SPECTRA["repeated"])).cuda().float().requires_grad_(True)
    y = eigpool.sqrtm(S)
    y.sum().backward()
    assert y.device == S.device and S.grad.device == S.device and y.dtype == torch.float32
    torch.testing.assert_close(y.cpu().double(), eigpool.sqrtm(S.detach().cpu().double()), rtol=1e-6, atol=1e-6)
