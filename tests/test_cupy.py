"""CuPy: the same API through array-api-compat's CuPy namespace, gradients through eigpool.vjp (GPU only).

Skipped, with the reason, where CuPy is not installed or has no usable GPU. The array-api-strict namespace stands in
for an unknown array library in the core tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
from conftest import spd

cupy = pytest.importorskip("cupy", reason="CuPy is not installed: the CuPy backend tests need CuPy and a GPU")
try:
    _GPU = bool(cupy.cuda.is_available())
except Exception as error:  # a broken driver or runtime: report it as the reason to skip
    pytest.skip(f"CuPy cannot query CUDA: {type(error).__name__}: {error}", allow_module_level=True)
if not _GPU:
    pytest.skip("cupy.cuda.is_available() is False: no usable GPU", allow_module_level=True)

import eigpool  # noqa: E402
from eigpool.backends import cupy as ecp  # noqa: E402
from eigpool.validation import check_vjp  # noqa: E402


def test_functions_keep_array_type_dtype_and_device():
    S = np.stack([spd(1, [0.5, 1.0, 1.0, 3.0]), spd(2, [0.2, 0.7, 1.9, 2.0])])
    with cupy.cuda.Device(0):
        x = cupy.asarray(S, dtype=cupy.float32)
        out = ecp.sqrtm(x)
    assert isinstance(out, cupy.ndarray) and out.dtype == cupy.float32 and out.device == x.device
    for b in range(2):
        np.testing.assert_allclose(cupy.asnumpy(out[b]), np.real(sl.sqrtm(S[b])), rtol=1e-5, atol=1e-6)


def test_gcp_pipeline_gradient_matches_numpy():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2, 5, 30))
    G = rng.standard_normal((2, 15))

    def gcp(x):
        return eigpool.triu_vec(eigpool.sqrtm(eigpool.covariance(x)))

    out_np, pull_np = eigpool.vjp(gcp, X)
    out_cp, pull_cp = ecp.vjp(gcp, cupy.asarray(X))
    (g_np,), (g_cp,) = pull_np(G), pull_cp(cupy.asarray(G))
    assert isinstance(g_cp, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(out_cp), out_np, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(g_cp), g_np, rtol=1e-9, atol=1e-12)


def test_vjp_matches_finite_differences_at_repeated_eigenvalues():
    # eigpool.validation.check_vjp evaluates CuPy functions on the GPU and differentiates through eigpool.vjp.
    result = check_vjp(ecp.invsqrtm, cupy.asarray(spd(3, [0.4, 1.5, 1.5, 2.5])))
    assert result.passed, str(result)
