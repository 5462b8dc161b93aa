"""Hypothesis strategies for symmetric positive (semi-)definite matrices with designed spectra.

``spd_matrices(d, kind)`` draws S = Q diag(l) Q^T (float64 NumPy, shape (d, d)) with Q a random orthogonal matrix and
eigenvalues l chosen by ``kind``:
- "distinct": relative gaps of at least 5 %, spread over [0.1, 10];
- "clustered": groups of eigenvalues whose relative gaps go down to ``min_gap`` (default 1e-8);
- "repeated": eigenvalues repeated exactly (multiplicities >= 2), S built exactly from them;
- "singular": a covariance of N < d samples, rank <= N - 1 (the GCP case of N - 1 < d);
- "ill_conditioned": log-uniform spectrum with condition number up to ``max_condition`` (default 1e8).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

__all__ = ["KINDS", "spd_matrices", "spectrum", "orthogonal"]

KINDS = ("distinct", "clustered", "repeated", "singular", "ill_conditioned")


def orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    """A Haar-random orthogonal d x d matrix (QR of a Gaussian matrix with the sign of R's diagonal fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def spectrum(rng: np.random.Generator, d: int, kind: str, *, min_gap: float = 1e-8,
             max_condition: float = 1e8) -> np.ndarray:
    """Eigenvalues (d,) ascending for ``kind`` (see the module docstring); "singular" is not a fixed spectrum."""
    if kind == "distinct":
        return np.sort(rng.uniform(0.1, 10.0) * 1.05 ** np.arange(d) * np.exp(rng.uniform(0, 0.02, d)))
    if kind == "clustered":
        centres = np.sort(rng.uniform(0.5, 5.0, max(1, d // 3)))
        base = np.repeat(centres, 3)[:d] if len(centres) * 3 >= d else np.linspace(0.5, 5.0, d)
        gaps = 10.0 ** rng.uniform(np.log10(min_gap), -2, d)
        return np.sort(base * (1 + np.cumsum(gaps) * (np.arange(d) % 3 != 0)))
    if kind == "repeated":
        values = np.sort(rng.uniform(0.5, 5.0, max(1, d // 2)))
        return np.sort(np.resize(np.repeat(values, 2), d))
    if kind == "ill_conditioned":
        cond = 10.0 ** rng.uniform(2, np.log10(max_condition))
        return np.sort(np.exp(rng.uniform(0, np.log(cond), d)) / cond * rng.uniform(0.5, 2.0))
    raise ValueError(f"spectrum: kind must be one of {KINDS[:2] + KINDS[2:3] + KINDS[4:]}, got {kind!r}")


def spd_matrix(seed: int, d: int, kind: str, **options: Any) -> np.ndarray:
    """The matrix ``spd_matrices`` draws for ``seed`` (deterministic; for examples and non-hypothesis tests)."""
    rng = np.random.default_rng(seed)
    if kind == "singular":
        n = int(options.get("samples", max(2, d // 4)))
        x = rng.standard_normal((d, n))
        x = x - x.mean(axis=1, keepdims=True)
        s = x @ x.T / n
    else:
        q = orthogonal(rng, d)
        s = (q * spectrum(rng, d, kind, **options)) @ q.T
    return (s + s.T) / 2


def spd_matrices(d: int | st.SearchStrategy[int], kind: str | st.SearchStrategy[str] = "distinct",
                 **options: Any) -> st.SearchStrategy[np.ndarray]:
    """Strategy of (d, d) float64 symmetric PSD matrices with spectra of ``kind`` (a value or a strategy for each).

    Example::

        @given(spd_matrices(8, st.sampled_from(KINDS)))
        def test_sqrtm_is_a_root(S):
            Q = eigpool.sqrtm(S)
            assert np.allclose(Q @ Q, S, atol=1e-10 * np.abs(S).max())
    """
    ds = d if isinstance(d, st.SearchStrategy) else st.just(d)
    kinds = kind if isinstance(kind, st.SearchStrategy) else st.just(kind)
    return st.builds(lambda seed, dd, kk: spd_matrix(seed, dd, kk, **options),
                     st.integers(0, 2**32 - 1), ds, kinds)
