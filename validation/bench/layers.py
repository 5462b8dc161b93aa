"""The benchmarked layers: each builder takes a ``Case`` and a device and returns X (B, d, N) -> triu(S^(1/2)).

S = Xc Xc^T / N is the covariance of the centred features; every layer returns the upper-triangular vector
(B, d(d+1)/2) of its square root, so that one cotangent serves all, and is differentiated by ``backward``:

- eigpool_exact: ``eigpool.backends.torch.GCPHead(reduction=None, path="dense")``, exact Loewner backward;
- eigpool_ns: the same head with ``method="newton_schulz"``, 5 iterations, hand-derived backward;
- torch_eigh: plain PyTorch, ``torch.linalg.eigh`` and autograd (its backward divides by l_i - l_j: inf at ties);
- torch_sqrth: ``torch.linalg.matrix_sqrth`` (PyTorch >= 2.14) and autograd;
- torch_ns: Newton-Schulz, 5 iterations (iSQRT-COV's schedule), autograd through the iterations;
- svd_pade: the original SVD-Pade layer as METHODS.md describes it: S = X Ibar X^T with the N x N centring matrix
  Ibar, ``torch.linalg.svd``, eigenvalues <= eps set to eps, the [50/50] Pade kernel (coefficients from
  ``mpmath.pade`` on the Taylor coefficients of 1/(1-x) at 20 digits) evaluated term by term, and +inf/-inf in the
  kernel replaced by the largest/smallest finite value of the batch tensor. A baseline only: eigpool never does this;
- floor: no checks and no regularisation, a bare batched ``eigh`` and exactly the products an exact backward needs
  (covariance, U sqrt(l) U^T; U^T G U, U (L o .) U^T, dS Xc): the cost below which no exact layer can go.

``RANK_BASELINES`` are the rank-aware table's layers: float32 features, computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

from .cases import Case

__all__ = ["BASELINES", "RANK_BASELINES", "Builder", "pade_coefficients"]

#: A layer builder: (case, device) -> the layer, a function of X (B, d, N) on that device.
Builder = Callable[[Case, str], Callable[[Any], Any]]


def _torch() -> Any:
    import torch

    return torch


@lru_cache(maxsize=16)
def _triu_index(d: int, device: Any) -> Any:
    i, j = _torch().triu_indices(d, d, device=device)
    return i * d + j


def _triu(Q: Any) -> Any:
    return Q.flatten(-2)[..., _triu_index(Q.shape[-1], Q.device)]


def _covariance(X: Any) -> Any:
    Xc = X - X.mean(dim=-1, keepdim=True)
    return Xc @ Xc.mT / X.shape[-1]


def _gcp_head(case: Case, device: str, **options: Any) -> Callable[[Any], Any]:
    from eigpool.backends.torch import GCPHead

    head = GCPHead(case.dim, reduction=None, **options).to(device)
    return lambda X: head(X[..., None])


def _eigpool_exact(case: Case, device: str = "cpu") -> Callable[[Any], Any]:
    # The dense layer (covariance -> eigh -> Loewner -> triu) at every N; the Gram route for N < d is --rank-aware's.
    return _gcp_head(case, device, compute_dtype=None, path="dense")


def _eigpool_ns(case: Case, device: str = "cpu") -> Callable[[Any], Any]:
    return _gcp_head(case, device, method="newton_schulz", iterations=5, compute_dtype=None)


def _torch_eigh(case: Case, device: str = "cpu") -> Callable[[Any], Any]:
    def layer(X: Any) -> Any:
        l, U = _torch().linalg.eigh(_covariance(X))
        return _triu((U * l.clamp_min(0).sqrt()[..., None, :]) @ U.mT)

    return layer


def _torch_sqrth(case: Case, device: str = "cpu") -> Callable[[Any], Any]:
    return lambda X: _triu(_torch().linalg.matrix_sqrth(_covariance(X)))


def _torch_ns(case: Case, device: str = "cpu", iterations: int = 5) -> Callable[[Any], Any]:
    torch = _torch()

    def layer(X: Any) -> Any:
        S = _covariance(X)
        eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
        t = S.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
        A = S / t
        # iSQRT-COV's schedule: the first step uses Z_0 = I, the last computes only Y.
        T = (3 * eye - A) / 2
        Y, Z = A @ T, T
        for _ in range(iterations - 2):
            T = (3 * eye - Z @ Y) / 2
            Y, Z = Y @ T, T @ Z
        Y = Y @ ((3 * eye - Z @ Y) / 2)
        return _triu(t.sqrt() * Y)

    return layer


@lru_cache(maxsize=1)
def pade_coefficients() -> tuple[list[float], list[float]]:
    """[50/50] Pade coefficients of 1/(1-x) from 20-digit Taylor coefficients, as the original layer computes them."""
    import mpmath

    with mpmath.workdps(20):
        taylor = mpmath.taylor(lambda x: 1 / (1 - x), 0, 100)
        p, q = mpmath.pade(taylor, 50, 50)
    return [float(c) for c in p], [float(c) for c in q]


def _pade_kernel(s: Any, p: Sequence[float], q: Sequence[float]) -> Any:
    """K_ij ~ 1/(s_i - s_j) for descending singular values s (B, d): (1/s_max) P(r)/Q(r), r = s_min/s_max, with the
    sign of s_i >= s_j (so the same sign for both entries of a tied pair), zero diagonal, and the batch-global inf
    clean-up of the original code."""
    torch = _torch()
    si, sj = s[..., :, None], s[..., None, :]
    hi, lo = torch.maximum(si, sj), torch.minimum(si, sj)
    r = lo / hi
    # Term by term, as the original layer does: sum_k c_k r^k with the powers built up one product at a time.
    power, P, Q = torch.ones_like(r), torch.zeros_like(r), torch.zeros_like(r)
    for pk, qk in zip(p, q, strict=True):
        P, Q = P + pk * power, Q + qk * power
        power = power * r
    K = torch.where(si >= sj, 1.0, -1.0) * P / (Q * hi)
    K = torch.where(torch.eye(s.shape[-1], dtype=torch.bool, device=s.device), 0.0, K)
    finite = K[torch.isfinite(K)]
    K = torch.where(K == math.inf, finite.max(), K)
    return torch.where(K == -math.inf, finite.min(), K)


def _svd_pade(case: Case, device: str = "cpu") -> Callable[[Any], Any]:
    torch = _torch()
    p, q = pade_coefficients()
    n = case.positions
    centring = (torch.eye(n, dtype=getattr(torch, case.dtype), device=device) - 1.0 / n) / n

    class _SVDPade(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, S: Any) -> tuple[Any, Any]:
            U, s, _ = torch.linalg.svd(S)
            s = torch.where(s <= torch.finfo(s.dtype).eps, torch.finfo(s.dtype).eps, s)
            ctx.save_for_backward(U, s)
            return U, s

        @staticmethod
        def backward(ctx: Any, gU: Any, gs: Any) -> Any:
            U, s = ctx.saved_tensors
            K = _pade_kernel(s, p, q)
            inner = K.mT * (U.mT @ gU) + torch.diag_embed(gs)
            return U @ inner @ U.mT

    def layer(X: Any) -> Any:
        U, s = _SVDPade.apply(X @ centring @ X.mT)
        return _triu((U * s.sqrt()[..., None, :]) @ U.mT)

    return layer


def _floor(case: Case, device: str = "cpu") -> Callable[[Any], Any]:
    torch = _torch()

    class _Floor(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, X: Any) -> Any:
            Xc = X - X.mean(dim=-1, keepdim=True)
            l, U = torch.linalg.eigh(Xc @ Xc.mT / X.shape[-1])
            r = l.clamp_min(0).sqrt()
            ctx.save_for_backward(Xc, U, r)
            return _triu((U * r[..., None, :]) @ U.mT)

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            Xc, U, r = ctx.saved_tensors
            d = U.shape[-1]
            G = g.new_zeros(*g.shape[:-1], d * d)
            G[..., _triu_index(d, g.device)] = g
            G = G.view(*g.shape[:-1], d, d)
            inner = (U.mT @ (G + G.mT) @ U) / (2 * (r[..., :, None] + r[..., None, :]))
            dS = U @ inner @ U.mT
            return ((dS + dS.mT) / Xc.shape[-1]) @ Xc

    return _Floor.apply


BASELINES: dict[str, Builder] = {
    "eigpool_exact": _eigpool_exact,
    "eigpool_ns": _eigpool_ns,
    "torch_eigh": _torch_eigh,
    "torch_sqrth": _torch_sqrth,
    "torch_ns": _torch_ns,
    "svd_pade": _svd_pade,
    "floor": _floor,
}


def _float64_head(path: str) -> Builder:
    def build(case: Case, device: str = "cpu") -> Callable[[Any], Any]:
        return _gcp_head(case, device, compute_dtype="float64", path=path)

    return build


def _svd_pade_float64(case: Case, device: str = "cpu") -> Callable[[Any], Any]:
    layer = _svd_pade(replace(case, dtype="float64"), device)
    return lambda X: layer(X.double()).to(X.dtype)


def _torch_sqrth_float64(case: Case, device: str = "cpu") -> Callable[[Any], Any]:
    layer = _torch_sqrth(replace(case, dtype="float64"), device)
    return lambda X: layer(X.double()).to(X.dtype)


RANK_BASELINES: dict[str, Builder] = {
    "eigpool_auto": _float64_head("auto"),  # the Gram route (eigpool.gram) when N < d: what GCPHead users get
    "eigpool_dense": _float64_head("dense"),
    "svd_pade": _svd_pade_float64,
    "torch_sqrth": _torch_sqrth_float64,  # its gradient is not finite at the zero eigenvalues of N < d
}
