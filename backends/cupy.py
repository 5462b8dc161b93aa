"""CuPy binding: CuPy arrays in, CuPy arrays on the same device out; gradients through ``vjp(fn, *args)``.

The core runs on CuPy through array-api-compat's CuPy namespace, the same code path as every other array library
(``cupy.linalg.eigh`` is batched on the GPU). CuPy has no automatic differentiation: ``vjp`` records eigpool's
operations and replays their VJP rules, as for NumPy::

    out, pullback = vjp(sqrtm, S)      # S: cupy.ndarray (..., d, d)
    (dS,) = pullback(G)                # a cupy.ndarray like S

Importing this module checks that CuPy can create an array on a GPU and says what is missing if it cannot.
"""

from __future__ import annotations

try:
    import cupy
except ImportError as error:
    raise ImportError("eigpool.backends.cupy needs CuPy: install the build for your CUDA version "
                      "(pip install 'eigpool[cupy]' for CUDA 12)") from error

import eigpool
from eigpool import vjp

globals().update({name: getattr(eigpool, name) for name in eigpool.ARRAY_FUNCTIONS})

__all__ = [*eigpool.ARRAY_FUNCTIONS, "vjp"]


def _require_device() -> None:
    """Raise RuntimeError, with CuPy's reason, if CuPy cannot allocate an array (no GPU, driver or runtime)."""
    try:
        cupy.zeros(1)
    except Exception as error:  # CuPy reports a missing driver, runtime or device with several exception types
        raise RuntimeError(f"eigpool.backends.cupy: CuPy is installed but cannot create an array on a GPU "
                           f"({type(error).__name__}: {error})") from error


_require_device()
