"""The rank-aware Gram route (eigpool.gram.pooled) against the dense path, finite differences and direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
from hypothesis import given, settings
from hypothesis import strategies as st

import eigpool
import eigpool.gram
from eigpool._divided import SPECTRAL_FUNCTIONS, SpectralFunction
from eigpool.gram import pooled, resolve_path
from eigpool.validation import check_vjp

CBRT = SpectralFunction("cbrt", lambda xp, l: l ** (1 / 3), lambda xp, l: l ** (-2 / 3) / 3,
                        lambda xp, a, b: 1 / (a ** (2 / 3) + (a * b) ** (1 / 3) + b ** (2 / 3)), True)

# name -> keyword arguments of pooled (the same on both paths)
FUNCTIONS = {
    "sqrt": {},
    "invsqrt": {"fn": "invsqrt"},
    "log": {"fn": "log"},
    "power(0.3)": {"fn": "power", "p": 0.3},
    "power(-1.5)": {"fn": "power", "p": -1.5},
    "power(2)": {"fn": "power", "p": 2.0},
    "cbrt": {"fn": CBRT},
    "seb": {"seb": True},
    "sqrt floor=1e-3": {"floor": 1e-3},
    "seb floor=1e-3": {"seb": True, "floor": 1e-3},
}


def features(seed: int, d: int, n: int, singular_values, batch: tuple[int, ...] = ()) -> np.ndarray:
    """X (*batch, d, n) whose centred part Xc has exactly the given singular values (eigenvalues of S: s^2 / n),
    plus a random mean per channel (which the covariance removes)."""
    rng = np.random.default_rng(seed)
    s = np.asarray(singular_values, dtype=np.float64)
    out = []
    for _ in range(int(np.prod(batch)) if batch else 1):
        # An orthonormal basis of R^n whose first vector is constant: the others are centred.
        q, _ = np.linalg.qr(np.column_stack([np.ones(n), rng.standard_normal((n, n - 1))]))
        u, _ = np.linalg.qr(rng.standard_normal((d, len(s))))
        out.append((u * s) @ q[:, 1:1 + len(s)].T + rng.standard_normal((d, 1)))
    return np.stack(out).reshape(*batch, d, n)


# d = 14 channels over N = 6 positions: rank <= 5, 9 or more exact zero eigenvalues of S.
SPECTRA = {
    "generic": [3.0, 2.2, 1.7, 1.1, 0.6],
    "rank_deficient": [3.0, 1.9, 0.8, 0.0, 0.0],
    "tied": [2.0, 2.0, 2.0, 1.0, 1.0],
    "below_floor": [3.0, 2.0, 1.2, 0.05, 0.02],  # eigenvalue ratios 2.8e-4, 4.4e-5: below floor=1e-3, not zero
}


def _relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _both_paths(X, G, **kwargs):
    """(F, dL/dX) of the Gram and the dense path for cotangent G."""
    results = []
    for path in ("gram", "dense"):
        out, pullback = eigpool.vjp(lambda X, path=path: pooled(X, path=path, **kwargs), X)
        results.append((out, pullback(G)[0]))
    return results


@pytest.mark.parametrize("spectrum", SPECTRA)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_gram_path_equals_dense_path(name, spectrum):
    X = features(1, 14, 6, SPECTRA[spectrum], batch=(2,))
    G = np.random.default_rng(2).standard_normal((2, 14, 14))
    (Fg, dg), (Fd, dd) = _both_paths(X, G, **FUNCTIONS[name])
    assert Fg.shape == (2, 14, 14) and dg.shape == X.shape
    assert _relative(Fg, Fd) < 1e-10
    assert _relative(dg, dd) < 1e-10


@pytest.mark.parametrize("name", ["sqrt", "seb", "log", "sqrt floor=1e-3"])
def test_fused_triu_vector_equals_triu_vec_of_the_dense_path(name):
    X = features(18, 14, 6, SPECTRA["below_floor"], batch=(2,))
    w = np.random.default_rng(19).standard_normal((2, 14 * 15 // 2))
    out, pullback = eigpool.vjp(lambda X: pooled(X, path="gram", triu=True, **FUNCTIONS[name]), X)
    ref, pullback_ref = eigpool.vjp(lambda X: eigpool.triu_vec(pooled(X, path="dense", **FUNCTIONS[name])), X)
    assert out.shape == (2, 105)
    assert _relative(out, ref) < 1e-10 and _relative(pullback(w)[0], pullback_ref(w)[0]) < 1e-10
    np.testing.assert_array_equal(pooled(X, path="dense", triu=True, **FUNCTIONS[name]), ref)


@pytest.mark.parametrize("rows", [1, 3, 5, 13])
def test_fused_triu_vector_in_row_blocks(rows, monkeypatch):
    # The fused route works on blocks of BLOCK_ROWS rows (256 by default): exercise uneven and one-row blocks.
    monkeypatch.setattr(eigpool.gram, "BLOCK_ROWS", rows)
    X = features(20, 14, 6, SPECTRA["tied"], batch=(2,))
    w = np.random.default_rng(21).standard_normal((2, 105))
    for kwargs in ({}, {"seb": True, "floor": 1e-3}):
        out, pullback = eigpool.vjp(lambda X, kw=kwargs: pooled(X, path="gram", triu=True, **kw), X)
        ref, pullback_ref = eigpool.vjp(lambda X, kw=kwargs: eigpool.triu_vec(pooled(X, path="dense", **kw)), X)
        assert _relative(out, ref) < 1e-10 and _relative(pullback(w)[0], pullback_ref(w)[0]) < 1e-10


@pytest.mark.parametrize("k", [0, 3, 8, 9, 10, 11, 12])
@pytest.mark.parametrize("kwargs", [{}, {"seb": True}, {"fn": "power", "p": 0.5}], ids=["sqrt", "seb", "power(0.5)"])
def test_truncation_agrees_on_both_paths(k, kwargs):
    # Rank 4: 10 exact zeros and one range eigenvalue below floor=1e-3 make 11 floored eigenvalues; k < 11 keeps them.
    X = features(3, 14, 6, SPECTRA["below_floor"][:4])
    G = np.random.default_rng(4).standard_normal((14, 14))
    (Fg, dg), (Fd, dd) = _both_paths(X, G, truncate=k, floor=1e-3, **kwargs)
    assert _relative(Fg, Fd) < 1e-10 and _relative(dg, dd) < 1e-10


def test_truncation_counts_the_floored_eigenspace_as_one_block():
    X = features(5, 14, 6, [3.0, 2.0, 1.2, 0.7, 0.3])
    S = eigpool.covariance(X)
    l, U = np.linalg.eigh(S)
    n_floored = 9  # 14 channels, rank 5
    for path in ("gram", "dense"):
        # Fewer than the floored eigenvalues: the tied block stays whole, nothing changes.
        np.testing.assert_array_equal(pooled(X, path=path, truncate=n_floored - 1), pooled(X, path=path))
        # The block and then the two smallest nonzero eigenvalues: a well-defined spectral projector.
        expected = (U[:, n_floored + 2:] * np.sqrt(l[n_floored + 2:])) @ U[:, n_floored + 2:].T
        np.testing.assert_allclose(pooled(X, path=path, truncate=n_floored + 2), expected, atol=1e-12)


def test_forward_on_full_rank_matches_scipy():
    # N > d: the Gram route still applies (path="gram") and the floor is inactive.
    X = features(6, 5, 9, [2.5, 2.0, 1.5, 1.0, 0.5])
    S = np.cov(X, bias=True)
    np.testing.assert_allclose(pooled(X, path="gram"), sl.sqrtm(S).real, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pooled(X, "log", path="gram"), sl.logm(S).real, atol=1e-10)
    np.testing.assert_allclose(pooled(X, "invsqrt", path="gram"), np.linalg.inv(sl.sqrtm(S).real), atol=1e-10)


def test_singular_forward_is_the_floored_square_root():
    # F = U sqrt(max(l, tau)) U^T with the d - r floored eigenvalues at tau: F^2 = S + tau P_null.
    X = features(7, 14, 6, SPECTRA["generic"])
    S = np.cov(X, bias=True)
    tau = 1e-3 * np.linalg.eigvalsh(S).max()
    F = pooled(X, floor=1e-3)
    u, s, _ = np.linalg.svd(X - X.mean(axis=1, keepdims=True))
    null = np.eye(14) - u[:, :5] @ u[:, :5].T
    np.testing.assert_allclose(F @ F, S + tau * null, atol=1e-12)
    # SEB: rho counts the 9 floored eigenvalues, each tau exp(-2 tau).
    l = np.linalg.eigvalsh(S)[-5:]
    rho = np.sqrt(np.sum(l * np.exp(-2 * l)) + 9 * tau * np.exp(-2 * tau))
    np.testing.assert_allclose(pooled(X, floor=1e-3, seb=True), (1 + rho) * F, rtol=1e-12)


# Finite differences. The floor tau = floor * max(l) moves with X but is held fixed by both paths' backward (as in
# eigpool.spectral); g(tau) then matters only where it is large (invsqrt, log), so those are checked at full rank.
FD_CASES = {
    "sqrt": ((14, 6), {}),
    "seb": ((14, 6), {"seb": True}),
    "power(0.7)": ((14, 6), {"fn": "power", "p": 0.7}),
    "log truncate=10": ((14, 6), {"fn": "log", "truncate": 10}),
    "sqrt truncate=11 floor=1e-3": ((14, 6), {"truncate": 11, "floor": 1e-3}),
    "invsqrt full rank": ((4, 9), {"fn": "invsqrt"}),
    "log full rank": ((4, 9), {"fn": "log"}),
    "seb triu": ((14, 6), {"seb": True, "triu": True}),
    "power(-1.5) full rank": ((4, 9), {"fn": "power", "p": -1.5}),
}


@pytest.mark.parametrize("name", FD_CASES)
def test_gram_vjp_matches_finite_differences(name):
    (d, n), kwargs = FD_CASES[name]
    X = features(8, d, n, np.linspace(2.5, 0.6, min(d, n - 1)))
    result = check_vjp(lambda X: pooled(X, path="gram", **kwargs), X, rtol=1e-6)
    assert result.passed, str(result)


@settings(max_examples=12, deadline=None)
@given(d=st.integers(3, 10), data=st.data())
def test_paths_agree_on_drawn_shapes_and_spectra(d, data):
    n = data.draw(st.integers(2, d), label="n")
    rank = data.draw(st.integers(1, n - 1), label="rank")
    values = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 3.0]), min_size=rank, max_size=rank))
    if max(values) == 0:
        values[0] = 1.0
    X = features(data.draw(st.integers(0, 2**16)), d, n, sorted(values, reverse=True))
    G = np.random.default_rng(0).standard_normal((d, d))
    (Fg, dg), (Fd, dd) = _both_paths(X, G)
    assert _relative(Fg, Fd) < 1e-10 and _relative(dg, dd) < 1e-10


def test_constant_features_give_the_floored_identity_and_zero_gradient():
    X = np.ones((2, 6, 3))
    (Fg, dg), (Fd, dd) = _both_paths(X, np.ones((2, 6, 6)))
    np.testing.assert_array_equal(Fg, Fd)
    assert np.all(dg == 0) and np.all(dd == 0)


def test_batch_independence_and_leading_dimensions():
    X = features(9, 10, 4, [2.0, 1.0, 0.5], batch=(2, 3))
    G = np.random.default_rng(10).standard_normal((2, 3, 10, 10))
    out, pullback = eigpool.vjp(lambda X: pooled(X, path="gram"), X)
    (dX,) = pullback(G)
    for i, j in np.ndindex(2, 3):
        out_ij, pullback_ij = eigpool.vjp(lambda X: pooled(X, path="gram"), X[i, j])
        np.testing.assert_allclose(out[i, j], out_ij, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(dX[i, j], pullback_ij(G[i, j])[0], rtol=1e-13, atol=1e-14)


def test_auto_path_is_gram_when_positions_are_fewer_than_channels():
    assert resolve_path("t", "auto", d=2048, n=196) == "gram"
    assert resolve_path("t", "auto", d=256, n=784) == "dense"
    assert resolve_path("t", "auto", d=8, n=8) == "dense"
    assert resolve_path("t", "auto", d=2048, n=196, grad="taylor") == "dense"
    X = features(11, 12, 5, [2.0, 1.0, 0.5])
    np.testing.assert_array_equal(pooled(X), pooled(X, path="gram"))
    np.testing.assert_array_equal(pooled(X, grad="taylor"), pooled(X, path="dense", grad="taylor"))


def test_float32_features_come_back_float32_computed_in_float64():
    # The floor is resolved against the compute dtype (float64), not the features' float32: the same function as
    # on the features cast to float64, on both paths.
    X = features(12, 12, 5, [2.0, 1.0, 0.5])
    for path in ("gram", "dense"):
        F32 = pooled(X.astype(np.float32), path=path)
        assert F32.dtype == np.float32
        np.testing.assert_allclose(F32, pooled(X.astype(np.float32).astype(np.float64), path=path), rtol=1e-6)


def test_runs_on_any_array_api_namespace(xp, monkeypatch):
    _, asarray, to_numpy = xp
    X = features(13, 8, 4, [2.0, 1.0, 0.5])
    np.testing.assert_allclose(to_numpy(pooled(asarray(X), path="gram")), pooled(X, path="gram"), rtol=1e-13)
    monkeypatch.setattr(eigpool.gram, "BLOCK_ROWS", 3)
    np.testing.assert_allclose(to_numpy(pooled(asarray(X), path="gram", triu=True)),
                               eigpool.triu_vec(pooled(X, path="dense")), rtol=1e-12)


def test_torch_autograd_matches_the_core_and_gradcheck():
    torch = pytest.importorskip("torch")
    X = features(14, 8, 4, [2.0, 1.0, 0.5])
    G = np.random.default_rng(15).standard_normal((8, 8))
    Xt = torch.tensor(X, requires_grad=True)
    out = pooled(Xt, seb=True)
    out.backward(torch.tensor(G))
    ref, pullback = eigpool.vjp(lambda X: pooled(X, seb=True, path="dense"), X)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(Xt.grad.numpy(), pullback(G)[0], rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda X: pooled(X, path="gram", fn="power", p=0.7), (Xt.detach()
                                                                                         .requires_grad_(),))
    assert pooled(Xt.detach().float()).dtype == torch.float32


BAD_CALLS = {
    "pooled(X, path='svd')": (lambda X: pooled(X, path="svd"), ValueError, "path must be one of"),
    "pooled(X, fn='exp_neg')": (lambda X: pooled(X, fn="exp_neg"), ValueError, "fn must be one of"),
    "pooled(X, fn='power')": (lambda X: pooled(X, fn="power"), ValueError, "p is the exponent of fn='power'"),
    "pooled(X, p=2)": (lambda X: pooled(X, p=2.0), ValueError, "p is the exponent"),
    "pooled(X, fn='log', seb=True)": (lambda X: pooled(X, fn="log", seb=True), ValueError, "needs fn='sqrt'"),
    "pooled(X, path='gram', grad='taylor')": (lambda X: pooled(X, path="gram", grad="taylor"), ValueError,
                                              "exact gradient only"),
    "pooled(X, grad='nope')": (lambda X: pooled(X, grad="nope"), ValueError, "grad must be one of"),
    "pooled(X, truncate=12)": (lambda X: pooled(X, truncate=12), ValueError, "truncate must be an integer"),
    "pooled(X, path='gram', degree=3)": (lambda X: pooled(X, path="gram", degree=3), TypeError,
                                         "unexpected option"),
    "pooled(X[0])": (lambda X: pooled(X[0, 0]), ValueError, "rank at least 2"),
    "pooled(nan)": (lambda X: pooled(X * np.nan), ValueError, "NaN"),
    "pooled(X, fn=identity)": (lambda X: pooled(X, fn=SPECTRAL_FUNCTIONS["identity"]), ValueError,
                               "positive=True"),
}


@pytest.mark.parametrize("call", BAD_CALLS)
def test_bad_calls_raise_clear_errors(call):
    fn, error, match = BAD_CALLS[call]
    with pytest.raises(error, match=match):
        fn(features(16, 12, 5, [1.0, 0.5]))


@pytest.mark.parametrize("kwargs", [{}, {"seb": True}, {"fn": "power", "p": 0.5, "truncate": 10}],
                         ids=["sqrt", "seb", "power truncate"])
def test_gcp_head_takes_the_gram_route_when_positions_are_fewer_than_channels(kwargs):
    torch = pytest.importorskip("torch")
    from eigpool.backends.torch import GCPHead

    x = torch.tensor(features(17, 12, 6, [2.0, 1.5, 1.0, 0.5], batch=(2,)).reshape(2, 12, 2, 3))
    results = {}
    for path in ("auto", "gram", "dense"):
        xx = x.clone().requires_grad_(True)
        y = GCPHead(12, reduction=None, path=path, **kwargs)(xx)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape))
        results[path] = (y.detach().numpy(), xx.grad.numpy())
    for a, b in zip(results["auto"], results["gram"], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(results["gram"], results["dense"], strict=True):
        assert _relative(a, b) < 1e-10
    with pytest.raises(ValueError, match="path must be one of"):
        GCPHead(12, reduction=None, path="svd")
    with pytest.raises(ValueError, match="needs method='eigen' and grad='exact'"):
        GCPHead(12, reduction=None, path="gram", method="newton_schulz")


def test_gcp_head_on_float32_features_agrees_on_both_paths():
    # The Gram route takes the features in float32 and returns the vector in float32 without whole-array casts; the
    # floor must still be float64's (the dense branch casts first): float32's would move the 7 floored eigenvalues'
    # square roots from ~1e-7 to ~1e-3.
    torch = pytest.importorskip("torch")
    from eigpool.backends.torch import GCPHead

    x = torch.tensor(features(18, 12, 6, [2.0, 1.5, 1.0, 0.5, 0.25], batch=(2,)).reshape(2, 12, 2, 3)).float()
    results = {}
    for path in ("gram", "dense"):
        xx = x.clone().requires_grad_(True)
        y = GCPHead(12, reduction=None, path=path)(xx)
        assert y.dtype == torch.float32
        y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
        results[path] = (y.detach().double().numpy(), xx.grad.double().numpy())
    for a, b in zip(results["gram"], results["dense"], strict=True):
        assert _relative(a, b) < 1e-6


@pytest.mark.parametrize("triu", [False, True], ids=["matrix", "vector"])
def test_gram_route_double_backward(triu):
    # Second order through the torch adapter's differentiable recomputation (distinct Gram eigenvalues), including
    # the vector's row copies.
    torch = pytest.importorskip("torch")
    X = torch.tensor(features(19, 6, 4, [2.0, 1.0, 0.5]), requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda X: pooled(X, path="gram", triu=triu), (X,))
