"""Resolved options: each public function turns its keyword options into one frozen, hashable specification.

A specification is validated once, when it is made (``resolve_spectral``, ``eigh_spec``, ``newton_schulz_spec``,
``compute_spec``); primitives are bound with it (``bind(p, *inputs, spec=spec)``) and their rules read its fields,
never a user's string. Layers store the specification they were built with, so a training step re-validates nothing.
Specifications compare and hash by value, so a compiled function (``torch.compile``, ``jax.jit``) sees the same one
on every call.

The eigenvalue floor is resolved against the *compute* dtype, inside the rules: ``Floor.relative(d, eps)`` with the
machine epsilon of the array being decomposed, so every route (dense, Gram, float32 or float64 input) floors alike.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from ._divided import SPECTRAL_FUNCTIONS, SpectralFunction, power, user_function
from ._kernels import Kernel, resolve_kernel

__all__ = ["COMPUTE_DTYPES", "GRADS", "ComputeSpec", "EighSpec", "Floor", "GramSpec", "NewtonSchulzSpec",
           "SpectralSpec", "compute_spec", "eigh_spec", "newton_schulz_spec", "resolve_function", "resolve_spectral"]

#: Values of ``compute_dtype`` besides None (the input's own dtype, half precision promoted to float32).
COMPUTE_DTYPES = ("float32", "float64")
#: Backward rules of the spectral functions: "exact" (Loewner), the kernels of eigpool.eigh, and "eigh" (the exact
#: eigenvector kernel, i.e. the chain rule through the eigendecomposition).
GRADS = ("exact", "taylor", "pade", "clip", "power_iteration", "eigh")
#: Values of ``triangle=`` besides None: read only that triangle of S (LAPACK's convention).
TRIANGLES = ("lower", "upper")
#: Named scalar functions of ``pooled`` and the layers (``fn=``); "power" takes the exponent ``p``.
FUNCTION_NAMES = ("sqrt", "invsqrt", "log", "power")


def _option_error(op: str, name: str, allowed: str, value: Any) -> ValueError:
    return ValueError(f"{op}: {name} must be {allowed}, got {value!r}")


def resolve_compute_dtype(op: str, compute_dtype: Any) -> str | None:
    """``compute_dtype`` validated: "float32", "float64" or None. Integer, complex and half-precision dtypes are
    refused (they would truncate or lose the spectrum)."""
    if compute_dtype is None or (isinstance(compute_dtype, str) and compute_dtype in COMPUTE_DTYPES):
        return compute_dtype
    raise _option_error(op, "compute_dtype", "'float32', 'float64' or None (a real floating dtype of at least 32 "
                        "bits; None: the input's own, half precision promoted to float32)", compute_dtype)


def _natural(op: str, name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _option_error(op, name, f"an integer >= {low}", value)
    return value


@dataclass(frozen=True)
class Floor:
    """The eigenvalue floor, relative to max|l| of each matrix: ``value``, or d * eps(compute dtype) if ``auto``.
    Eigenvalues below ``floor * max|l|`` (at least the smallest normal number) are raised to it; their subgradient is
    0 (the floor is held fixed). ``raises`` (floor="raise"): the same "auto" floor in the computation, and the value
    check refuses a matrix with an eigenvalue at or below it (singular to working precision) instead."""

    value: float = 0.0
    auto: bool = False
    raises: bool = False

    def relative(self, d: int, eps: float) -> float:
        """The relative floor for d x d matrices computed in a dtype of machine epsilon ``eps``."""
        return d * eps if self.auto else self.value

    def __repr__(self) -> str:
        return "Floor('raise')" if self.raises else "Floor('auto')" if self.auto else f"Floor({self.value!r})"


#: The named values of ``floor=``.
FLOOR_NAMES = ("auto", "raise")


def resolve_floor(op: str, floor: Any) -> Floor | None:
    """``floor=`` validated: None (no floor beyond the smallest normal number), "auto", "raise" (an error for
    eigenvalues where "auto" would floor) or a finite float >= 0."""
    if floor is None:
        return None
    if isinstance(floor, str) and floor in FLOOR_NAMES:
        return Floor(auto=True, raises=floor == "raise")
    if isinstance(floor, (int, float)) and not isinstance(floor, bool) and math.isfinite(floor) and floor >= 0:
        return Floor(float(floor))
    raise _option_error(op, "floor", "None, 'auto', 'raise' or a finite non-negative float", floor)


@dataclass(frozen=True)
class ComputeSpec:
    """The options of a primitive that has only a compute dtype (covariance, triu_vec)."""

    compute_dtype: str | None = "float64"


@dataclass(frozen=True)
class SpectralSpec:
    """A spectral function F(S) = U g(l) U^T, resolved: the scalar function ``fn``; the backward (``kernel`` None:
    the exact Loewner formula; a ``Kernel``: the chain rule through that eigenvector kernel); the eigenvalue
    ``floor`` (None for functions defined on every real number); ``truncate`` (the number of smallest eigenvalues set
    to zero); ``seb`` (the scaling eigen branch gain); the ``compute_dtype``; ``triangle`` (None: F of the Hermitian
    part (S + S^H) / 2, S checked for symmetry to round-off; "lower" or "upper": F of that triangle of S mirrored, the
    convention of LAPACK, torch.linalg.eigh and pyRiemann, with no symmetry check); ``trace_scale`` (F(S) =
    sqrt(t) U g(l / t) U^T with t = tr(S), the Newton-Schulz normalisation; [Note: trace scaling] in
    eigpool.spectral)."""

    fn: SpectralFunction
    kernel: Kernel | None = None
    floor: Floor | None = field(default_factory=lambda: Floor(auto=True))
    truncate: int = 0
    seb: bool = False
    compute_dtype: str | None = "float64"
    triangle: str | None = None
    trace_scale: bool = False

    @property
    def grad(self) -> str:
        """The ``grad=`` name of the backward: "exact", "eigh" or a kernel's name."""
        if self.kernel is None:
            return "exact"
        return "eigh" if self.kernel.name == "exact" else self.kernel.name


def resolve_function(op: str, fn: str | SpectralFunction, p: Any = None) -> SpectralFunction:
    """The scalar function for ``fn`` ("sqrt", "invsqrt", "log", "power" with exponent ``p``, or a
    ``SpectralFunction``)."""
    if isinstance(fn, SpectralFunction):
        if p is not None:
            raise _option_error(op, "p", "None for a SpectralFunction", p)
        return fn
    if not isinstance(fn, str) or fn not in FUNCTION_NAMES:
        raise _option_error(op, "fn", f"one of {FUNCTION_NAMES} or a SpectralFunction", fn)
    if fn == "power":
        if p is None:
            raise ValueError(f"{op}: p is the exponent of fn='power' and is required by it, got p=None")
        return power(resolve_exponent(op, p))
    if p is not None:
        raise ValueError(f"{op}: p is the exponent of fn='power' only, got fn={fn!r}, p={p!r}")
    return SPECTRAL_FUNCTIONS[fn]


def resolve_exponent(op: str, p: Any) -> float:
    """A finite real exponent as a float: a Python or NumPy real number (``np.float32(0.5)``); TypeError otherwise
    (an array exponent is an input of ``powm``, not an option)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not math.isfinite(p):
        raise TypeError(f"{op}: argument 'p' must be a finite real number, got {p!r}")
    return float(p)


def resolve_spectral(op: str, fn: str | SpectralFunction, *, p: Any = None, grad: str = "exact", floor: Any = "auto",
                  truncate: int = 0, seb: bool = False, compute_dtype: Any = "float64",
                  kernel_options: dict[str, Any] | None = None, triangle: Any = None,
                  trace_scale: bool = False) -> SpectralSpec:
    """The ``SpectralSpec`` of ``op`` for these options, validated once; each error names ``op``, the option and
    the allowed values. ``floor`` applies to functions with ``positive=True`` only (it is dropped for the others)."""
    function = resolve_function(op, fn, p)
    if not isinstance(grad, str) or grad not in GRADS:
        raise _option_error(op, "grad", f"one of {GRADS}", grad)
    options = dict(kernel_options or {})
    if grad == "exact":
        resolve_kernel(op, "exact", options)  # the Loewner backward takes no options: the same error as the kernel's
        kernel = None
    else:
        kernel = resolve_kernel(op, "exact" if grad == "eigh" else grad, options)
    if not isinstance(seb, bool):
        raise _option_error(op, "seb", "True or False", seb)
    if seb and function.name != "sqrt":
        raise ValueError(f"{op}: seb=True scales the matrix square root; it needs fn='sqrt', got fn={function.name!r}")
    if not isinstance(trace_scale, bool):
        raise _option_error(op, "trace_scale", "True or False", trace_scale)
    if trace_scale and seb:
        raise ValueError(f"{op}: seb=True and trace_scale=True do not combine (SEB scales the unnormalised root)")
    # A positive function is always floored, at least at the smallest normal number (floor=None: relative 0).
    floored = (resolve_floor(op, floor) or Floor()) if function.positive else None
    if triangle is not None and not (isinstance(triangle, str) and triangle in TRIANGLES):
        raise _option_error(op, "triangle", f"None or one of {TRIANGLES}", triangle)
    return SpectralSpec(function, kernel, floored, _natural(op, "truncate", truncate, 0), seb,
                        resolve_compute_dtype(op, compute_dtype), triangle, trace_scale)


def user_spectral_function(f: Any, df: Any, positive: bool) -> SpectralFunction:
    """The ``SpectralFunction`` of a user's f and df (cached: the same object for the same functions)."""
    if not callable(f) or not callable(df):
        raise TypeError(f"spectral: f and df must be callables on arrays of eigenvalues, got {f!r} and {df!r}")
    return user_function(f, df, bool(positive))


@dataclass(frozen=True)
class EighSpec:
    """The options of ``eigh``: the gradient ``kernel``, the eigenvalue ``floor`` (None: raw eigenvalues) and the
    ``compute_dtype``."""

    kernel: Kernel = Kernel("exact")
    floor: Floor | None = None
    compute_dtype: str | None = "float64"


def eigh_spec(op: str, *, grad: str = "exact", floor: Any = None, compute_dtype: Any = "float64",
              kernel_options: dict[str, Any] | None = None) -> EighSpec:
    """The ``EighSpec`` for these options, validated once."""
    return EighSpec(resolve_kernel(op, grad, dict(kernel_options or {})), resolve_floor(op, floor),
                    resolve_compute_dtype(op, compute_dtype))


@dataclass(frozen=True)
class NewtonSchulzSpec:
    """The options of the Newton-Schulz iteration: the number of ``iterations``, the output (``inverse``: S^(-1/2)
    instead of S^(1/2)) and the ``compute_dtype``."""

    iterations: int = 5
    inverse: bool = False
    compute_dtype: str | None = "float64"


def newton_schulz_spec(op: str, *, iterations: int = 5, inverse: bool = False,
                       compute_dtype: Any = "float64") -> NewtonSchulzSpec:
    """The ``NewtonSchulzSpec`` for these options, validated once."""
    return NewtonSchulzSpec(_natural(op, "iterations", iterations, 1), bool(inverse),
                            resolve_compute_dtype(op, compute_dtype))


def compute_spec(op: str, compute_dtype: Any = "float64") -> ComputeSpec:
    """The ``ComputeSpec`` for ``compute_dtype``, validated once."""
    return ComputeSpec(resolve_compute_dtype(op, compute_dtype))


@dataclass(frozen=True)
class GramSpec:
    """The Gram route of ``pooled``: the spectral function's ``spectral`` specification (exact backward), whether the
    result is the upper-triangular vector (``triu``), and the dtype the result is written in (``out_dtype``, the
    features' own: the vector is written block by block in it, never cast whole)."""

    spectral: SpectralSpec
    triu: bool
    out_dtype: Any

    @property
    def compute_dtype(self) -> str | None:
        return self.spectral.compute_dtype
