"""Symmetric positive (semi-)definite matrices with designed spectra, for tests: hypothesis strategies and seeds.

A matrix S = Q diag(l) Q^T, with Q Haar-random orthogonal and eigenvalues l chosen by ``kind``:

- "distinct": consecutive relative gaps between 5 % and 10 %, from a random start in [0.1, 1];
- "clustered": clusters of ``size`` (default 3) eigenvalues at well separated centres; inside a cluster the relative
  gaps are ``gap`` if given, else log-uniform in [``min_gap``, 1e-2] (``min_gap`` default 1e-8);
- "repeated": distinct values (at least 5 % apart) each repeated exactly ``multiplicity`` times (default 2);
- "singular": for ``spectrum``, ``rank`` (default max(1, d // 4)) positive eigenvalues and exact zeros; for matrices,
  the covariance of ``samples`` (default max(2, d // 4)) centred Gaussian samples, rank <= samples - 1 < d: the GCP
  case of a feature map with fewer positions than channels;
- "ill_conditioned": log-uniform eigenvalues whose extremes have the ratio ``condition`` exactly (default: drawn
  log-uniformly in [1e2, ``max_condition``], ``max_condition`` default 1e8).

"Exactly repeated" refers to the designed spectrum; the computed S = (Q diag(l) Q^T + its transpose) / 2 has
eigenvalues equal to it up to round-off, |l_i(S) - l_i| <= a few d eps max|l|.

Use in your own test suite (hypothesis draws the seed, so failures shrink and replay)::

    from hypothesis import given, settings, strategies as st
    from eigpool.validation.strategies import KINDS, spd_matrices

    @settings(max_examples=20, deadline=None)
    @given(spd_matrices(8, st.sampled_from(KINDS)))
    def test_sqrtm_is_a_root(S):
        Q = eigpool.sqrtm(S)
        assert np.allclose(Q @ Q, S, atol=1e-10 * np.abs(S).max())

``spd_matrix(seed, d, kind, **options)`` returns the same matrices without hypothesis (examples, benchmarks):
hypothesis (the ``test`` extra) is imported only when a strategy is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hypothesis import strategies as st

__all__ = ["KINDS", "orthogonal", "spd_matrices", "spd_matrix", "spectra", "spectrum"]

KINDS = ("distinct", "clustered", "repeated", "singular", "ill_conditioned")


def orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    """A Haar-random orthogonal d x d matrix (QR of a Gaussian matrix with the sign of R's diagonal fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _separated(rng: np.random.Generator, n: int, low: float = 1.05, high: float = 1.10) -> np.ndarray:
    """n ascending values from a random start in [0.1, 1], consecutive ratios in [low, high]."""
    ratios = np.exp(rng.uniform(np.log(low), np.log(high), max(n - 1, 0)))
    return rng.uniform(0.1, 1.0) * np.concatenate([[1.0], np.cumprod(ratios)])


def spectrum(rng: np.random.Generator, d: int, kind: str, *, min_gap: float = 1e-8, max_condition: float = 1e8,
             gap: float | None = None, size: int = 3, multiplicity: int = 2, condition: float | None = None,
             rank: int | None = None) -> np.ndarray:
    """Eigenvalues (d,) in ascending order, float64, for ``kind`` (see the module docstring for the options)."""
    if kind == "distinct":
        return _separated(rng, d)
    if kind == "clustered":
        n = -(-d // size)
        centres = _separated(rng, n, 1.5, 2.0)
        rel = np.full((n, size - 1), gap) if gap is not None else 10.0 ** rng.uniform(np.log10(min_gap), -2,
                                                                                         (n, size - 1))
        within = np.concatenate([np.ones((n, 1)), np.cumprod(1 + rel, axis=1)], axis=1)
        return (centres[:, None] * within).ravel()[:d]
    if kind == "repeated":
        return np.repeat(_separated(rng, -(-d // multiplicity)), multiplicity)[:d]
    if kind == "singular":
        r = max(1, d // 4) if rank is None else rank
        if not 0 <= r <= d:
            raise ValueError(f"spectrum: rank must be in [0, d] = [0, {d}], got {r!r}")
        return np.concatenate([np.zeros(d - r), _separated(rng, r)])
    if kind == "ill_conditioned":
        cond = 10.0 ** rng.uniform(2, np.log10(max_condition)) if condition is None else float(condition)
        inner = np.sort(rng.uniform(0, 1, max(d - 2, 0)))
        exponents = np.concatenate([[0.0], inner, [1.0]])[:d] if d > 1 else np.array([1.0])
        return rng.uniform(0.5, 2.0) * cond ** (exponents - 1)
    raise ValueError(f"spectrum: kind must be one of {KINDS}, got {kind!r}")


def spd_matrix(seed: int, d: int, kind: str, **options: Any) -> np.ndarray:
    """The (d, d) float64 matrix ``spd_matrices`` draws for ``seed`` (deterministic; options as in ``spectrum``;
    "singular" also takes ``samples``: with it, or without ``rank``, S is a covariance of that many samples)."""
    rng = np.random.default_rng(seed)
    if kind == "singular" and "rank" not in options:
        n = int(options.get("samples", max(2, d // 4)))
        x = rng.standard_normal((d, n))
        x = x - x.mean(axis=1, keepdims=True)
        s = x @ x.T / n
    else:
        q = orthogonal(rng, d)
        s = (q * spectrum(rng, d, kind, **options)) @ q.T
    return (s + s.T) / 2


def _hypothesis(caller: str) -> Any:
    """hypothesis.strategies, imported on first use; an ImportError naming the extra if it is not installed."""
    try:
        from hypothesis import strategies
    except ImportError as exc:
        raise ImportError(f"eigpool.validation.strategies.{caller} needs hypothesis, which is not installed: "
                          "pip install 'eigpool[test]' (or pip install hypothesis). spd_matrix and spectrum "
                          "work without it.") from exc
    return strategies


def spectra(d: int | st.SearchStrategy[int], kind: str | st.SearchStrategy[str] = "distinct",
            **options: Any) -> st.SearchStrategy[np.ndarray]:
    """Strategy of designed spectra (d,) ascending float64 (``spectrum`` with a drawn seed)."""
    st = _hypothesis("spectra")
    ds = d if isinstance(d, st.SearchStrategy) else st.just(d)
    kinds = kind if isinstance(kind, st.SearchStrategy) else st.just(kind)
    return st.builds(lambda seed, dd, kk: spectrum(np.random.default_rng(seed), dd, kk, **options),
                     st.integers(0, 2**32 - 1), ds, kinds)


def spd_matrices(d: int | st.SearchStrategy[int], kind: str | st.SearchStrategy[str] = "distinct", *,
                 batch: tuple[int, ...] = (), xp: Any = None, dtype: str = "float64",
                 **options: Any) -> st.SearchStrategy[Any]:
    """Strategy of symmetric PSD matrices (*batch, d, d) with spectra of ``kind`` (a value or a strategy for each).

    Every matrix of a batch has its own seed (all different). xp: an array namespace (``numpy``, ``torch``,
    ``array_api_strict``, ...; default NumPy) and ``dtype`` the name of its dtype; the matrix is built in float64
    and then converted.

    Example::

        @given(spd_matrices(8, st.sampled_from(KINDS), batch=(4,)))
        def test_batched(S):
            assert eigpool.sqrtm(S).shape == (4, 8, 8)
    """
    st = _hypothesis("spd_matrices")
    ds = d if isinstance(d, st.SearchStrategy) else st.just(d)
    kinds = kind if isinstance(kind, st.SearchStrategy) else st.just(kind)
    count = int(np.prod(batch)) if batch else 1

    def build(seeds: list[int], dd: int, kk: str) -> Any:
        s = np.stack([spd_matrix(seed, dd, kk, **options) for seed in seeds]).reshape(*batch, dd, dd)
        if xp is None:
            return s.astype(dtype)
        return xp.asarray(s, dtype=getattr(xp, dtype))

    seeds = st.lists(st.integers(0, 2**32 - 1), min_size=count, max_size=count, unique=True)
    return st.builds(build, seeds, ds, kinds)
