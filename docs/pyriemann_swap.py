"""pytest plugin: run pyRiemann's tests with eigpool's matrix functions in place of pyriemann.geometry.base's.

EIGPOOL_SWAP=0: pyRiemann's own functions (the baseline); 1: eigpool's with its defaults; 2: eigpool's with
pyRiemann's conventions (triangle="lower", floor=None, the exponent shaped like the eigenvalues (..., 1)).
Usage, from a checkout of pyRiemann with it and eigpool installed (docs/spd.md, "pyRiemann's tests"):

    EIGPOOL_SWAP=2 PYTHONPATH=/path/to/eigpool/docs python -m pytest -p pyriemann_swap tests/test_geometry_*.py
"""
import importlib
import os
import pkgutil
import sys
from typing import Any

import pyriemann
import pyriemann.geometry.base as base

import eigpool

MODE = os.environ.get("EIGPOOL_SWAP", "1")
OPTIONS = {"triangle": "lower"} if MODE == "2" else {}
FLOOR = {"floor": None} if MODE == "2" else {}


def _exponent(C: Any, alpha: Any) -> Any:
    # pyRiemann's exponent broadcasts against the eigenvalues (..., n); eigpool's against the batch shape (...).
    if MODE == "2" and hasattr(alpha, "ndim") and alpha.ndim == C.ndim - 1:
        return alpha[..., 0]
    return alpha


SWAP = {
    "sqrtm": lambda C: eigpool.sqrtm(C, **OPTIONS, **FLOOR),
    "invsqrtm": lambda C: eigpool.invsqrtm(C, **OPTIONS, **FLOOR),
    "logm": lambda C: eigpool.logm(C, **OPTIONS, **FLOOR),
    "expm": lambda C: eigpool.expm(C, **OPTIONS),
    "powm": lambda C, alpha: eigpool.powm(C, _exponent(C, alpha), **OPTIONS, **FLOOR),
    "ddexpm": lambda X, Cref: eigpool.frechet("exp", Cref, X),
    "ddlogm": lambda X, Cref: eigpool.frechet("log", Cref, X, **FLOOR),
}


def pytest_configure(config: Any) -> None:
    if MODE == "0":
        return
    for m in pkgutil.walk_packages(pyriemann.__path__, "pyriemann."):
        try:
            importlib.import_module(m.name)
        except ImportError:
            continue  # an optional dependency of pyRiemann
    originals = {name: getattr(base, name) for name in SWAP}
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("pyriemann"):
            for name, original in originals.items():
                if getattr(module, name, None) is original:
                    setattr(module, name, SWAP[name])
