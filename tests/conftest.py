"""Shared fixtures: the ``xp`` namespaces the core must work on, and SPD test matrices."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("jax") is not None:
    import jax

    # The tests compare against float64 references: JAX's 64-bit mode, before any JAX array is made.
    jax.config.update("jax_enable_x64", True)


class _ReadOnlyNumPy:
    """NumPy with inputs made read-only: a test on this namespace fails if eigpool writes into an input."""

    name = "numpy_readonly"

    @staticmethod
    def asarray(x):
        a = np.array(x, dtype=np.float64)
        a.flags.writeable = False
        return a


def _namespaces():
    params = [pytest.param("numpy", id="numpy"), pytest.param("numpy_readonly", id="numpy_readonly")]
    params.append(pytest.param("array_api_strict", id="array_api_strict"))
    return params


@pytest.fixture(params=_namespaces())
def xp(request):
    """(name, asarray, to_numpy) for each array namespace the core is tested on."""
    if request.param == "numpy":
        return "numpy", lambda x: np.asarray(x, dtype=np.float64), np.asarray
    if request.param == "numpy_readonly":
        return "numpy_readonly", _ReadOnlyNumPy.asarray, np.asarray
    strict = pytest.importorskip("array_api_strict")
    return "array_api_strict", lambda x: strict.asarray(np.asarray(x, dtype=np.float64)), lambda a: np.asarray(a)


def spd(seed: int, eigenvalues) -> np.ndarray:
    """Q diag(eigenvalues) Q^T with a seeded random orthogonal Q, symmetrised."""
    rng = np.random.default_rng(seed)
    d = len(eigenvalues)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    s = (q * np.asarray(eigenvalues, dtype=np.float64)) @ q.T
    return (s + s.T) / 2


@pytest.fixture
def restore_torch_threads():
    """Training runs set torch's thread count (one thread for tiny tensors on a busy machine): restore it after."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
