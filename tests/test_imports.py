"""The core never imports a framework: importing eigpool and using it on NumPy arrays loads no torch or cupy."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import eigpool


def test_import_eigpool_loads_no_framework():
    code = ("import sys, numpy as np, eigpool; eigpool.vjp(eigpool.sqrtm, np.eye(3)); "
            "import eigpool.validation; "
            "print(sorted(m for m in ('torch', 'cupy', 'jax', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_subpackages_install_under_eigpool():
    code = ("import eigpool.backends, eigpool.validation, eigpool.models, importlib.util as u; "
            "print(u.find_spec('backends'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/").stdout
    assert out.strip() == "None"


BACKENDS = importlib.util.find_spec("eigpool.backends")


def test_every_backend_offers_every_public_function():
    # The array functions of eigpool, under the same names (torch has its own autodiff: no vjp). Read from the
    # sources: the CuPy backend cannot be imported without CuPy and a GPU.
    functions = {n for n in eigpool.__all__ if inspect.isfunction(getattr(eigpool, n))} - {"bind"}
    assert {"sqrtm", "pooled", "triu_vec", "vjp"} <= functions
    for name in ("numpy", "cupy", "torch"):
        tree = ast.parse((Path(BACKENDS.submodule_search_locations[0]) / f"{name}.py").read_text())
        exported = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                        and any(getattr(t, "id", None) == "__all__" for t in node.targets))
        missing = functions - set(exported) - ({"vjp"} if name == "torch" else set())
        assert not missing, f"eigpool.backends.{name} lacks {sorted(missing)}"
