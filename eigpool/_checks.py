"""Input checks shared by every public function: one place, one wording.

Each message names the operation, the argument, what was expected and what came in. ``TypeError`` for a wrong kind
of object or dtype, ``ValueError`` for a wrong shape or wrong values.

Two kinds of check:
- structural checks (type, dtype, rank, square shape) read only shapes and dtypes: they always run, under tracing too;
- value checks (finite entries, symmetry, positive semi-definiteness, singularity) read the values, so they run
  only on concrete arrays: they are skipped under tracing (meta and fake tensors, ``torch.func`` transforms,
  ``torch.compile``, ``jax.jit``; each backend says what is concrete), and can be switched off with
  ``eigpool.value_checks(False)`` or the environment variable ``EIGPOOL_VALUE_CHECKS=0``. They run once per call,
  *after* the computation, as fused reductions: one host read for features, two for matrices (finiteness, then
  symmetry and positive semi-definiteness together). The positive semi-definiteness test uses the eigenvalues the
  computation produced, so no eigendecomposition is repeated; the Newton-Schulz iteration, which produces none,
  is tested by a Cholesky factorisation of S shifted by its round-off (a third of one of its steps). Only when that
  fused test fails (or the computation raised) is the input examined in detail, for the message.
Complex input (Hermitian matrices, accepted by the spectral functions) is checked the same way: finite real and
imaginary parts, |S - S^H| to round-off, real eigenvalues.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ._primitive import backend_of, namespace_of
from ._xp import ct, eye_like, is_complex, max_abs, real_part, sym

__all__ = ["check_array", "check_matrix", "check_truncate", "check_values", "checked", "relative_eps",
           "symmetry_tolerance", "value_checks"]

_VALUE_CHECKS: ContextVar[bool] = ContextVar("eigpool_value_checks",
                                             default=os.environ.get("EIGPOOL_VALUE_CHECKS", "1") != "0")


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turn the value checks of eigpool's functions on or off inside a ``with`` block (thread- and task-local).

    ``with eigpool.value_checks(False): ...`` skips the tests for NaN/inf, symmetry and positive semi-definiteness
    (one fused reduction and one host-device synchronisation per call): use it on a hot path whose inputs are known
    to be valid. Structural checks (types, shapes, options) always run. Default: on, unless the environment variable
    ``EIGPOOL_VALUE_CHECKS`` is "0".
    """
    token = _VALUE_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def check_array(x: Any, op: str, name: str, min_ndim: int, *, complex_ok: bool = False) -> Any:
    """Check that ``x`` is a real floating array (or complex floating, if ``complex_ok``) of rank >= ``min_ndim``;
    return its namespace (structural only)."""
    xp = namespace_of(x)
    if xp is None:
        raise TypeError(f"{op}: argument '{name}' must be an array, got {type(x).__name__}")
    kinds = ("real floating", "complex floating") if complex_ok else "real floating"
    if not xp.isdtype(x.dtype, kinds):
        wanted = "a real or complex floating dtype" if complex_ok else "a real floating dtype"
        raise TypeError(f"{op}: argument '{name}' must have {wanted}, got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{op}: argument '{name}' must have rank at least {min_ndim}, got shape {tuple(x.shape)}")
    return xp


def check_matrix(S: Any, op: str, name: str = "S", *, complex_ok: bool = False) -> Any:
    """Check that ``S`` is a floating batch of square matrices (..., d, d), d >= 0 (real, or also complex if
    ``complex_ok``: Hermitian input); return its namespace."""
    xp = check_array(S, op, name, 2, complex_ok=complex_ok)
    if S.shape[-1] != S.shape[-2]:
        raise ValueError(f"{op}: argument '{name}' must be square in its last two axes, got shape {tuple(S.shape)}")
    return xp


def check_truncate(op: str, k: int, d: int) -> None:
    """``truncate`` must leave at least one eigenvalue of a d x d matrix (0 is always allowed)."""
    if k and not k < d:
        raise ValueError(f"{op}: truncate must be an integer in [0, d) = [0, {d}), got {k!r}")


def relative_eps(xp: Any, dtype: Any) -> float:
    """Tolerance for round-off in eigenvalues of ``dtype``: sqrt(machine epsilon) (1.5e-8 for float64, 3.5e-4 for
    float32; the real precision of a complex dtype)."""
    return math.sqrt(float(xp.finfo(dtype).eps))


def symmetry_tolerance(xp: Any, dtype: Any) -> float:
    """The largest relative asymmetry max|S - S^H| / max|S| accepted as round-off: eps^(1/4) (1.2e-4 for float64,
    1.9e-2 for float32). [Note: symmetry tolerance]."""
    return float(xp.finfo(dtype).eps) ** 0.25


# [Note: symmetry tolerance]
# The spectral functions compute F((S + S^H) / 2), so an asymmetric part is ignored, never half-read; the check only
# tells round-off from a mistake. An entry of a matrix computed in floating point carries an error of up to about
# n u |terms| (u = eps / 2, n the length of the sums; Higham, Accuracy and Stability of Numerical Algorithms, 3.1),
# relative to the terms it was summed from, not to itself: where the terms cancel by a factor kappa (A^(-1/2) B
# A^(-1/2) with B close to A: kappa = cond(A); a difference logm(X + h I) - logm(X): kappa = |logm X| / |result|),
# the asymmetry is n u kappa relative to the result. No tolerance read from S alone can bound kappa; eps^(1/4)
# accepts n kappa up to 2 eps^(-3/4) (1e12 in float64: cond(A) = 1e10 at d = 100; 3e5 in float32) and refuses an
# asymmetry above 1.2e-4 (float64) or 1.9e-2 (float32) of the largest entry, where mistakes lie (a general matrix, a
# product of two symmetric matrices that do not commute: O(1)). eigpool's own results are exactly Hermitian.


def _active(x: Any) -> bool:
    return _VALUE_CHECKS.get() and math.prod(x.shape) > 0 and backend_of(x).concrete(x)


def checked(op: str, name: str, x: Any, compute: Callable[[], tuple], *, symmetric: bool = True,
            eigenvalues: int | None = None, psd: bool = False, singular: float | None = None,
            squares: bool = False, one_triangle: bool = False) -> tuple:
    """``compute()`` (a tuple of outputs), then the value checks of the input ``x`` named ``name``: finite entries,
    and if ``symmetric`` (x is a batch of matrices) symmetry to round-off ([Note: symmetry tolerance]), positive
    semi-definiteness from the ascending eigenvalues at ``compute()[eigenvalues]`` (if given), or if ``psd``
    (no eigenvalues computed: Newton-Schulz) a positive trace and a Cholesky factorisation of S + sqrt(eps) tr(S) I.
    ``singular``: a relative floor r; a matrix whose smallest eigenvalue is below r * max|l| is refused
    (``floor="raise"``). ``squares``: the first output is quadratic in the features ``x`` (a covariance), so finite
    features can overflow it: it must be finite too, else the error says so. ``one_triangle``: the computation reads
    one triangle of x (``triangle=``), so its symmetry is not checked.

    The checks are one fused reduction read once; when it fails, or when ``compute`` raised, the input is examined
    in detail and the first problem found is raised as a ValueError naming ``op`` and ``name``.
    """
    if not _active(x):
        return compute()
    try:
        outputs = compute()
    except Exception:
        _diagnose(op, name, x, symmetric, None, psd, None, squares, one_triangle)
        raise
    l = None if eigenvalues is None else outputs[eigenvalues]
    if not _passes(x, symmetric, l, psd, singular, outputs[0] if squares else None, one_triangle):
        _diagnose(op, name, x, symmetric, l, psd, singular, squares, one_triangle)
    return outputs


def check_values(op: str, name: str, x: Any, *, symmetric: bool = False) -> None:
    """The value checks of an input that no computation examines (an exponent array, a direction E): finite
    entries, and symmetry to round-off if ``symmetric``; the same switches and messages as ``checked``."""
    if _active(x) and not _passes(x, symmetric, None, False, None, None):
        _diagnose(op, name, x, symmetric, None, False, None)


def _extremes(xp: Any, x: Any, axis: tuple) -> tuple[Any, Any]:
    """(max, min) over ``axis`` of the real and imaginary parts together: NaN propagates through both, and neither
    overflows (a sum of finite entries of scale 1e160 is finite, of 1e308 is not)."""
    parts = (xp.real(x), xp.imag(x)) if is_complex(xp, x) else (x,)
    high = functools.reduce(xp.maximum, [xp.max(v, axis=axis) for v in parts])
    low = functools.reduce(xp.minimum, [xp.min(v, axis=axis) for v in parts])
    return high, low


def _asymmetry(xp: Any, x: Any) -> tuple[Any, Any]:
    """(max |S - S^H|, max |S|) per matrix, each of shape (...); halved first, so no entry overflows."""
    half = x / 2
    return xp.max(xp.abs(half - ct(xp, half)), axis=(-2, -1)) * 2, xp.max(xp.abs(x), axis=(-2, -1))


def _passes(x: Any, symmetric: bool, l: Any, psd: bool, singular: float | None, result: Any,
            one_triangle: bool = False) -> bool:
    """The fused test: True if every check passes (False may be a false alarm, re-examined by ``_diagnose``).

    Matrices are read twice: finiteness first (from their max and min, through which NaN propagates), so that the
    symmetry test never subtracts infinities (which NumPy would report with a warning before the error)."""
    xp = namespace_of(x)
    high, low = _extremes(xp, x, tuple(range(x.ndim)) if not symmetric else (-2, -1))
    if not bool(xp.all(xp.isfinite(high)) & xp.all(xp.isfinite(low))):
        return False
    if result is not None:
        r_high, r_low = _extremes(xp, result, tuple(range(result.ndim)))
        return bool(xp.isfinite(r_high) & xp.isfinite(r_low))
    if not symmetric:
        return True
    tests = []
    if not one_triangle:
        asym, scale = _asymmetry(xp, x)
        tests.append(asym <= symmetry_tolerance(xp, x.dtype) * scale)
    if l is not None:
        top = max_abs(xp, l)[..., 0]
        tests.append(l[..., 0] >= -relative_eps(xp, x.dtype) * top)  # the input's precision, not l's
        if singular is not None:
            tests.append(l[..., 0] > singular * top)
    if psd:
        tests.append(real_part(xp, xp.linalg.trace(x)) > 0)
    ok = functools.reduce(lambda a, b: a & xp.all(b), tests, True)
    return bool(ok) and (not psd or _shifted_cholesky_succeeds(xp, x))


def _shifted_cholesky_succeeds(xp: Any, x: Any) -> bool:
    """Whether S + sqrt(eps) tr(S) I has a Cholesky factor: every eigenvalue of S is above -sqrt(eps) tr(S), the
    positive semi-definiteness test for a computation that produced no eigenvalues (a third of the cost of one
    Newton-Schulz step)."""
    shift = relative_eps(xp, x.dtype) * real_part(xp, xp.linalg.trace(x))
    try:
        factor = xp.linalg.cholesky(sym(xp, x) + shift[..., None, None] * eye_like(xp, x))
    except Exception:  # LAPACK reports the failure as its library's own error type
        return False
    return bool(xp.all(xp.isfinite(real_part(xp, factor))))


def _diagnose(op: str, name: str, x: Any, symmetric: bool, l: Any, psd: bool, singular: float | None,
              squares: bool = False, one_triangle: bool = False) -> None:
    """Raise the ValueError for the first problem of ``x``; return if there is none."""
    xp = namespace_of(x)
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{op}: argument '{name}' contains NaN or inf")
    top = float(xp.max(xp.abs(x)))
    # |Xc| <= 2 max|X|: a finite covariance of finite features can only fail to be finite by overflow.
    if squares and 2 * top > math.sqrt(float(xp.finfo(x.dtype).max)):
        raise ValueError(f"{op}: the covariance of argument '{name}' overflows {x.dtype}: max |{name}| = {top:.3g}, "
                         f"and the covariance squares it; divide {name} by a constant c first (the square root "
                         f"scales back: sqrtm(c^2 S) = c sqrtm(S))")
    if not symmetric:
        return
    tol = symmetry_tolerance(xp, x.dtype)
    asym, scale = _asymmetry(xp, x)
    if not one_triangle and bool(xp.any(asym > tol * scale)):
        worst = float(xp.max(asym / xp.where(scale > 0, scale, xp.ones_like(scale))))
        kind = "Hermitian" if is_complex(xp, x) else "symmetric"
        raise ValueError(f"{op}: argument '{name}' must be {kind}; max |S - S^H| / max |S| = {worst:.3g} exceeds "
                         f"the round-off tolerance {tol:.3g} for {x.dtype} (symmetrise it: (S + S^H) / 2)")
    if psd and not bool(xp.all(real_part(xp, xp.linalg.trace(x)) > 0)):
        raise ValueError(f"{op}: argument '{name}' must be positive semi-definite with a positive trace; "
                         "found a matrix with trace <= 0")
    if psd and l is None:
        l = xp.linalg.eigvalsh(sym(xp, x))
    if l is None:
        return
    top = max_abs(xp, l)[..., 0]
    ratio = l[..., 0] / xp.where(top > 0, top, xp.ones_like(top))
    tol = relative_eps(xp, x.dtype)
    if bool(xp.any(ratio < -tol)):
        raise ValueError(f"{op}: argument '{name}' must be positive semi-definite; its smallest eigenvalue is "
                         f"{float(xp.min(ratio)):.3g} times its largest magnitude, below the round-off tolerance "
                         f"-{tol:.3g}")
    if singular is not None and bool(xp.any(ratio <= singular)):
        raise ValueError(f"{op}: argument '{name}' is singular to working precision: its smallest eigenvalue is "
                         f"{float(xp.min(ratio)):.3g} times its largest, at or below the floor {singular:.3g} "
                         "(floor='raise' refuses it; floor='auto' clamps it there, or add a ridge S + c I)")
