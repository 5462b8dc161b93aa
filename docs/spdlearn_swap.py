"""pytest plugin: run spd_learn's tests with eigpool's matrix functions in place of spd_learn.functional's.

EIGPOOL_SWAP=0: spd_learn's own functions (the baseline); 1: eigpool's with its defaults; 2: eigpool's with
spd_learn's conventions: triangle="lower" (what its torch.linalg.eigh reads; for the user functions of
eigpool.spectral, which has no triangle option, the plugin mirrors that triangle), compute_dtype=None (the input's
dtype) and an array exponent shaped like the eigenvalues, (..., 1), as spd_learn's matrix_power broadcasts it, of
X's dtype (the real part taken: airm_geodesic casts t to a complex X's dtype). EIGPOOL_VALUE_CHECKS=0 (eigpool's own
switch) skips the symmetry and PSD checks, so indefinite input is floored as spd_learn clamps it.
Swapped: the autograd Functions' ``apply`` (matrix_log, matrix_exp, matrix_power, matrix_sqrt, matrix_inv_sqrt,
matrix_sqrt_inv, clamp_eigvals, abs_eigvals, matrix_softplus, matrix_inv_softplus), which every usage site calls,
and the plain functions matrix_log_func, matrix_exp_func, clamp_eigvals_func, frechet_derivative_log and
frechet_derivative_exp in every spd_learn module that imported them. Usage, from a checkout of spd_learn with it
and eigpool installed (docs/spd.md, "spd_learn's functional tests"):

    EIGPOOL_SWAP=1 PYTHONPATH=/path/to/eigpool/docs python -m pytest -p spdlearn_swap -p no:cacheprovider -q \\
        -o addopts="" tests --ignore=tests/test_correctness.py
"""
import importlib
import os
import pkgutil
import sys
from typing import Any

import spd_learn
import spd_learn.functional.autograd as autograd
import spd_learn.functional.core as core
import spd_learn.functional.frechet as frechet
import torch

import eigpool

MODE = os.environ.get("EIGPOOL_SWAP", "1")
OPTIONS: dict[str, Any] = {"triangle": "lower", "compute_dtype": None} if MODE == "2" else {}
DTYPE: dict[str, Any] = {"compute_dtype": None} if MODE == "2" else {}


def _lower(X: Any) -> Any:
    # the lower triangle mirrored, the real part of the diagonal: what torch.linalg.eigh reads (mode 2)
    if MODE != "2":
        return X
    below = X.tril(-1)
    return below + below.mH + torch.diag_embed(X.diagonal(dim1=-2, dim2=-1).real.to(X.dtype))


def _spectral(X: Any, f: Any, df: Any, positive: bool = False) -> Any:
    return eigpool.spectral(_lower(X), f, df, positive=positive, **DTYPE)


def _clamp(X: Any, threshold: Any) -> Any:
    # ReEig: max(l, threshold), subgradient 0 at and below the threshold (spd_learn's); ReEig passes the threshold
    # as a tensor of X's dtype, complex for complex X
    if isinstance(threshold, torch.Tensor) and threshold.is_complex():
        threshold = threshold.real
    return _spectral(X, lambda s: s.clamp(min=threshold), lambda s: (s > threshold).to(s.dtype))


def _exponent(p: Any) -> Any:
    # spd_learn's exponent broadcasts against the eigenvalues (..., n); eigpool's against the batch shape (...).
    # airm_geodesic casts it to X's dtype (complex for complex X, imaginary part zero); eigpool's is real.
    if MODE != "2" or not isinstance(p, torch.Tensor):
        return p
    p = p.real if p.is_complex() else p
    return p[..., 0] if p.ndim >= 1 and p.shape[-1] == 1 else p


FUNCTIONS = {  # the autograd Functions: their ``apply`` is replaced
    core.matrix_log: lambda X: eigpool.logm(X, **OPTIONS),
    core.matrix_exp: lambda X: eigpool.expm(X, **OPTIONS),
    core.matrix_power: lambda X, p: eigpool.powm(X, _exponent(p), **OPTIONS),
    core.matrix_sqrt: lambda X: eigpool.sqrtm(X, **OPTIONS),
    core.matrix_inv_sqrt: lambda X: eigpool.invsqrtm(X, **OPTIONS),
    core.matrix_sqrt_inv: lambda X: (eigpool.sqrtm(X, **OPTIONS), eigpool.invsqrtm(X, **OPTIONS)),
    core.clamp_eigvals: _clamp,
    core.abs_eigvals: lambda X: _spectral(X, lambda s: s.abs(), lambda s: s.sign()),
    core.matrix_softplus: lambda X: _spectral(X, core.matrix_softplus.applied_fct, core.matrix_softplus.derivative),
    core.matrix_inv_softplus: lambda X: _spectral(
        X, core.matrix_inv_softplus.applied_fct, core.matrix_inv_softplus.derivative, positive=True),
}
SWAP = {  # the plain functions: replaced wherever they were imported
    (autograd, "matrix_log_func"): lambda X: eigpool.logm(X, **OPTIONS),
    (autograd, "matrix_exp_func"): lambda X: eigpool.expm(X, **OPTIONS),
    (autograd, "clamp_eigvals_func"): _clamp,
    (frechet, "frechet_derivative_log"): lambda P, V: eigpool.frechet("log", _lower(P), V, **DTYPE),
    (frechet, "frechet_derivative_exp"): lambda X, W: eigpool.frechet("exp", _lower(X), W, **DTYPE),
}


def pytest_configure(config: Any) -> None:
    if MODE == "0":
        return
    for m in pkgutil.walk_packages(spd_learn.__path__, "spd_learn."):
        try:
            importlib.import_module(m.name)
        except ImportError:
            continue  # an optional dependency of spd_learn
    for function, replacement in FUNCTIONS.items():
        function.apply = staticmethod(replacement)
    originals = {name: (getattr(module, name), replacement) for (module, name), replacement in SWAP.items()}
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("spd_learn"):
            for name, (original, replacement) in originals.items():
                if getattr(module, name, None) is original:
                    setattr(module, name, replacement)
